"""The authenticating front of a serving pod (see docs/serving.md, "Decision: tokens").

TorchServe 0.12 only accepts the random keys it generates itself, so the cluster's shared
tokens (a Kubernetes Secret) are checked here, and each request is forwarded to TorchServe on
127.0.0.1 with the pod-local key from `key_file.json` - TorchServe's own token check stays on.
The front also renews that local key before it expires. Requests are admitted on their raw path
(persona_serving.routes): the management port reads only (TorchServe's model API is off: no model
is registered after start, from any source). Reply streams pass through as they come: one event
per chunk, written only as fast as the client reads (a client that reads nothing for
`STALL_SECONDS`, or goes away, is cut off, which closes the stream to TorchServe and so retires
its row).

With several bases (issue 22) the front also routes: a `POST /predictions/fleet` goes to the fleet
of its persona's base (persona_serving.bases), a model of this TorchServe or another base's
serving Service; its answer, a stream or not, passes through the same relay. Locally (`persona
serve` with several bases, no Secrets) the front runs on the inference port only and accepts
TorchServe's own inference key, so clients see no difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from aiohttp import web

from persona_serving.bases import FORWARDED_HEADER, BaseRouter, Fleet
from persona_serving.routes import admit
from personafleet.client import TokenSource, error_detail, send_authorized
from personafleet.inference import FLEET_MODEL, InferenceError

logger = logging.getLogger(__name__)

RENEW_BEFORE = timedelta(minutes=5)
# A streaming client that takes no bytes for this long is dropped (its row is retired); until
# then aiohttp holds at most its write buffer (64 KiB) for it: no unbounded buffering.
STALL_SECONDS = 30.0
# Headers worth passing on; hop-by-hop and auth headers are the front's business.
FORWARDED_HEADERS = ("content-type", "accept", "x-asr-language")  # the last: the asr model's language override
FLEET_PATH = f"/predictions/{FLEET_MODEL}"  # what clients ask for: the front picks the base's fleet


async def _pass_on(request: web.Request, upstream: httpx.Response, source: str, error: str) -> web.StreamResponse:
    """`upstream`'s answer (opened with `stream=True`) to the client, then closed: a chunked one (a
    reply stream) event by event, anything else whole. `source` and `error` name a break before
    the client got anything."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() == "content-type"}
    try:
        if upstream.headers.get("transfer-encoding", "").lower() != "chunked":
            return web.Response(status=upstream.status_code, body=await upstream.aread(), headers=headers)
        return await _relay(request, upstream, headers)
    except httpx.TransportError as exc:
        return _error(503, error, f"{source} broke off its answer: {exc.__class__.__name__}")
    finally:
        await upstream.aclose()


async def _relay(request: web.Request, upstream: httpx.Response, headers: dict[str, str]) -> web.StreamResponse:
    """A reply stream, one event (line) per chunk, as fast as the client takes it. If the upstream
    breaks off (a worker restart), the stream ends without its final event: clients know that as
    an interrupted reply."""
    relayed = web.StreamResponse(status=upstream.status_code, headers=headers)
    relayed.enable_chunked_encoding()
    await relayed.prepare(request)
    try:
        async for line in upstream.aiter_lines():
            if line:
                await asyncio.wait_for(relayed.write(line.encode("utf-8") + b"\n"), STALL_SECONDS)
    except (ConnectionResetError, asyncio.TimeoutError) as exc:
        logger.info("Dropped a reply stream: the client %s", "stalled" if isinstance(exc, asyncio.TimeoutError) else "went away")
        return relayed
    except httpx.TransportError as exc:
        logger.warning("A reply stream broke off upstream: %s", exc.__class__.__name__)
    with contextlib.suppress(ConnectionResetError):  # the client left after its last event: nothing lost
        await relayed.write_eof()
    return relayed


def _from_torchserve(response: httpx.Response) -> bool:
    """TorchServe's own error body (`{"code", "type", "message"}`), not the handler's `{"error", "detail"}`."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "type" in body and "error" not in body


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
        router: BaseRouter | None = None,
    ):
        """`inference_token_file` is the Secret clients present (in a cluster; also what this front
        presents to another base's front) or, locally, TorchServe's key file itself.
        `backend_timeout`: the longest the front waits for TorchServe's answer (above TorchServe's own
        response timeout, so that one fires first); then the client gets a 504. `router`: several bases."""
        inference = TokenSource(token_file=inference_token_file)
        management = TokenSource(token_file=management_token_file) if management_token_file else None
        self.router, self.peer_token = router, inference
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

    async def forward(self, listener: Listener, request: web.Request) -> web.StreamResponse:
        admitted = admit(listener.name, request.method, request.raw_path)
        if admitted.refused is not None:
            return _error(*admitted.refused)
        path = admitted.path  # the raw path checked is the path sent: no client normalises it later
        public_probe = listener is self.inference and path == "/ping"
        if not public_probe and not listener.authorized(request):
            return _error(401, "unauthorized", f"a valid bearer token for the {listener.name} API is required")
        params, body = list(request.query.items()), await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        if listener is self.inference and self.router is not None and request.method == "POST" and path == FLEET_PATH:
            return await self.to_fleet(self.router, request, params, body, headers)
        try:
            response = await send_authorized(
                listener.http, listener.local_key, request.method, path, params=params, content=body, headers=headers,
                stream=True,
            )
        except httpx.TimeoutException:
            return _error(504, "backend_timeout", f"TorchServe did not answer within {listener.timeout:g} s")
        except httpx.TransportError as exc:
            return _error(503, "backend_unavailable", f"TorchServe is not answering: {exc.__class__.__name__}")
        return await _pass_on(request, response, "TorchServe", "backend_unavailable")

    async def to_fleet(self, router: BaseRouter, request: web.Request, params: list, body: bytes,
                       headers: dict[str, str]) -> web.StreamResponse:
        """A prediction, sent to the fleet of its persona's base (here, or another base's Service)
        and its answer relayed as it comes. That fleet not answering is this request's 503; the
        other bases keep serving."""
        forwarded = request.headers.get(FORWARDED_HEADER)
        fleet = router.local(forwarded) if forwarded else router.route(body)
        if fleet is None:
            return _error(503, "base_not_served", f"another front forwarded a request for base {forwarded}, "
                                                  "which this server does not serve")
        if not isinstance(fleet, Fleet):
            return _error(fleet.status, fleet.error, fleet.detail)
        try:
            if fleet.local:
                response = await send_authorized(self.inference.http, self.inference.local_key, "POST",
                                                 f"/predictions/{fleet.model}", params=params, content=body,
                                                 headers=headers, stream=True)
            else:
                response = await send_authorized(self.inference.http, self.peer_token, "POST", f"{fleet.url}{FLEET_PATH}",
                                                 params=params, content=body,
                                                 headers=headers | {FORWARDED_HEADER: fleet.base}, stream=True)
        except httpx.TimeoutException:
            return _error(504, "backend_timeout", f"the fleet of base {fleet.base} did not answer within "
                                                  f"{self.inference.timeout:g} s")
        except httpx.TransportError as exc:
            return _error(503, "fleet_unavailable", f"the fleet of base {fleet.base} is not answering "
                                                    f"({exc.__class__.__name__})")
        if fleet.local and response.status_code in (404, 503) and _from_torchserve(response):
            # The base's model is not registered or has no worker: the fleet is down, not the request wrong.
            await response.aclose()
            return _error(503, "fleet_unavailable", f"the fleet of base {fleet.base} is down: {error_detail(response)[1]}")
        return await _pass_on(request, response, f"the fleet of base {fleet.base}", "fleet_unavailable")

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

    async def serve(self, host: str, inference_port: int, management_port: int | None, stopping: asyncio.Event) -> None:
        """Listen on the public ports until `stopping` is set (no management port: TorchServe's own
        management API stays where it is, as locally)."""
        runners = []
        ports = [(self.inference, inference_port)] + ([(self.management, management_port)] if management_port else [])
        try:
            for listener, port in ports:
                runner = web.AppRunner(self.app(listener), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, host, port).start()
                runners.append(runner)
            logger.info("Front on %s: inference %d, management %s", host, inference_port, management_port or "direct")
            renewal = asyncio.create_task(self.keep_keys_fresh())
            await stopping.wait()
            renewal.cancel()
        finally:
            for runner in runners:
                await runner.cleanup()
            for listener in (self.inference, self.management):
                await listener.http.aclose()
