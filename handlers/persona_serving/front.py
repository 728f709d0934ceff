"""The authenticating front of a serving pod (see docs/serving.md, "Decision: tokens").

TorchServe 0.12 only accepts the random keys it generates itself, so the cluster's shared
tokens (a Kubernetes Secret) are checked here, and each request is forwarded to TorchServe on
127.0.0.1 with the pod-local key from `key_file.json` - TorchServe's own token check stays on.
The front also renews that local key before it expires. Requests are admitted on their raw path
(persona_serving.routes): the management port reads only (TorchServe's model API is off: no model
is registered after start, from any source).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from aiohttp import web

from persona_serving.routes import admit
from personafleet.client import TokenSource, send_authorized
from personafleet.inference import InferenceError

logger = logging.getLogger(__name__)

RENEW_BEFORE = timedelta(minutes=5)
# Headers worth passing on; hop-by-hop and auth headers are the front's business.
FORWARDED_HEADERS = ("content-type", "accept", "x-asr-language")  # the last: the asr model's language override


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.Response(
        status=status, text=InferenceError(error=error, detail=detail).model_dump_json(), content_type="application/json"
    )


class Listener:
    """One public port: which client tokens it accepts and which TorchServe port it forwards to."""

    def __init__(self, name: str, accepted: list[TokenSource], backend: str, local_key: TokenSource, timeout: float):
        self.name, self.accepted, self.local_key, self.timeout = name, accepted, local_key, timeout
        self.http = httpx.AsyncClient(base_url=backend, timeout=httpx.Timeout(timeout, connect=5))

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        offered = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        return bool(offered) and any(
            (token := source.token()) and hmac.compare_digest(offered.encode(), token.encode())
            for source in self.accepted
        )


class AuthFront:
    def __init__(
        self,
        *,
        inference_token_file: Path,
        management_token_file: Path | None,
        key_file: Path,
        inference_backend: str,
        management_backend: str,
        backend_timeout: float,
    ):
        """`backend_timeout`: the longest the front waits for TorchServe's answer (above TorchServe's own
        response timeout, so that one fires first); then the client gets a 504."""
        inference = TokenSource(token_file=inference_token_file)
        management = TokenSource(token_file=management_token_file) if management_token_file else None
        self.management_key = TokenSource(token_file=key_file, kind="management")
        self.inference = Listener(
            "inference", [inference, *([management] if management else [])], inference_backend,
            TokenSource(token_file=key_file, kind="inference"), backend_timeout,
        )
        self.management = Listener("management", [management] if management else [], management_backend,
                                   self.management_key, backend_timeout)

    def app(self, listener: Listener) -> web.Application:
        async def forward(request: web.Request) -> web.StreamResponse:
            return await self.forward(listener, request)

        app = web.Application(client_max_size=8 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", forward)
        return app

    async def forward(self, listener: Listener, request: web.Request) -> web.Response:
        admitted = admit(listener.name, request.method, request.raw_path)
        if admitted.refused is not None:
            return _error(*admitted.refused)
        path = admitted.path  # the raw path checked is the path sent: no client normalises it later
        public_probe = listener is self.inference and path == "/ping"
        if not public_probe and not listener.authorized(request):
            return _error(401, "unauthorized", f"a valid bearer token for the {listener.name} API is required")
        params, body = list(request.query.items()), await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        try:
            response = await send_authorized(
                listener.http, listener.local_key, request.method, path, params=params, content=body, headers=headers,
            )
        except httpx.TimeoutException:
            return _error(504, "backend_timeout", f"TorchServe did not answer within {listener.timeout:g} s")
        except httpx.TransportError as exc:
            return _error(503, "backend_unavailable", f"TorchServe is not answering: {exc.__class__.__name__}")
        return web.Response(
            status=response.status_code, body=response.content,
            headers={k: v for k, v in response.headers.items() if k.lower() == "content-type"},
        )

    async def keep_keys_fresh(self) -> None:
        """Renew TorchServe's local keys a few minutes before they expire (a failed renewal is
        retried next round; a key rejected meanwhile is renewed on demand by `send_authorized`)."""
        while True:
            for listener in (self.inference, self.management):
                expires = listener.local_key.expires_at
                if expires is not None and expires - datetime.now(timezone.utc) < RENEW_BEFORE:
                    try:
                        await listener.local_key.refresh(self.management.http, listener.local_key.token())
                    except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad round
                        logger.warning("Renewing TorchServe's %s key failed: %s", listener.name, exc)
            await asyncio.sleep(30)

    async def serve(self, host: str, inference_port: int, management_port: int, stopping: asyncio.Event) -> None:
        """Listen on both public ports until `stopping` is set."""
        runners = []
        try:
            for listener, port in ((self.inference, inference_port), (self.management, management_port)):
                runner = web.AppRunner(self.app(listener), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, host, port).start()
                runners.append(runner)
            logger.info("Auth front on %s: inference %d, management %d", host, inference_port, management_port)
            renewal = asyncio.create_task(self.keep_keys_fresh())
            await stopping.wait()
            renewal.cancel()
        finally:
            for runner in runners:
                await runner.cleanup()
            for listener in (self.inference, self.management):
                await listener.http.aclose()
