"""The inference client: how the bot, `persona chat` and the operator talk to a persona model.

One small module on purpose: every caller gets the same timeouts, retries with backoff, bearer
token handling and error mapping. TorchServe's keys expire (60 min by default), so a client given
a `token_file` re-reads it whenever the server says the key is wrong, and - when the file is
TorchServe's own `key_file.json` - asks the server for a fresh key with the file's API key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
from pydantic import BaseModel

from personafleet.inference import FLEET_MODEL, InferenceRequest, InferenceResponse, PersonaAbout

logger = logging.getLogger(__name__)

KeyKind = Literal["inference", "management"]
Answer = TypeVar("Answer", bound=BaseModel)

# TorchServe answers a missing, wrong or expired key with 400 and this phrase; a front that checks
# tokens itself (see docs/serving.md) answers 401.
_AUTH_PHRASE = "token authori"
# Written by `persona serve` beside key_file.json: where the server's APIs listen.
ENDPOINTS_FILE = "endpoints.json"


class InferenceRejected(Exception):
    """The server refused this request (4xx): retrying the same request cannot help."""

    def __init__(self, detail: str, *, status: int | None = None, error: str = "rejected"):
        super().__init__(detail)
        self.detail, self.status, self.error = detail, status, error


class InferenceUnavailable(Exception):
    """The server could not answer (connection error, timeout, 5xx) even after the retries."""


class TokenSource:
    """Where a bearer token comes from: a fixed string, a plain file (a mounted Kubernetes Secret:
    its stripped content), or TorchServe's `key_file.json` (its `inference` or `management` key).

    The file is re-read when its modification time changes, so a rotated key is picked up without
    a restart; `reload()` forces a read after the server rejected the current key.
    """

    def __init__(self, token: str | None = None, token_file: str | Path | None = None, kind: KeyKind = "inference"):
        self.kind = kind
        self._fixed = token
        self.path = Path(token_file) if token_file is not None else None
        self._token: str | None = None
        self._api_key: str | None = None
        self._expires: datetime | None = None
        self._mtime: float | None = None
        self._lock = asyncio.Lock()

    @property
    def renewable(self) -> bool:
        """True for TorchServe's key file: its API key can ask the server for a fresh key."""
        self.token()
        return self._api_key is not None

    @property
    def expires_at(self) -> datetime | None:
        self.token()
        return self._expires

    def token(self) -> str | None:
        if self._fixed is not None or self.path is None:
            return self._fixed
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self._token
        if mtime != self._mtime:
            self.reload()
        return self._token

    def reload(self) -> bool:
        """Read the file again; True when the token changed."""
        if self.path is None:
            return False
        previous = self._token
        try:
            self._mtime = self.path.stat().st_mtime
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            logger.warning("Cannot read token file %s: %s", self.path, exc)
            return False
        self._token, self._api_key, self._expires = _parse_token_file(text, self.kind)
        return self._token != previous

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def refresh(self, http: httpx.AsyncClient, rejected: str | None) -> bool:
        """After the server rejected `rejected`: re-read the file and, if it still holds that key
        and it is TorchServe's key file, ask the server for a fresh one. True when the key changed.

        One refresh at a time: concurrent requests that hit an expired key wait for the first
        renewal instead of each rotating the key again (which would invalidate the others')."""
        async with self._lock:
            if self.reload() or self.token() != rejected:
                return True
            return await self._renew(http)

    async def _renew(self, http: httpx.AsyncClient) -> bool:
        """`/token?type=KIND` with the API key: TorchServe writes a new key into the key file.
        The endpoint exists on the management port only; `persona serve` names that port in
        `endpoints.json` beside the key file."""
        if not self.renewable:
            return False
        url = f"{self.management_url() or http.base_url}".rstrip("/") + "/token"
        response = await http.post(url, params={"type": self.kind}, headers={"Authorization": f"Bearer {self._api_key}"})
        if response.status_code != 200:
            logger.warning("Key renewal refused (%s): %s", response.status_code, response.text[:200])
            return False
        logger.info("Renewed the %s key in %s", self.kind, self.path)
        return self.reload()

    def management_url(self) -> str | None:
        try:
            return json.loads((self.path.parent / ENDPOINTS_FILE).read_text(encoding="utf-8"))["management"]  # type: ignore[union-attr]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def _parse_token_file(text: str, kind: KeyKind) -> tuple[str | None, str | None, datetime | None]:
    """(token, api_key, expiry) from a key file: TorchServe's JSON or a plain token."""
    try:
        keys = json.loads(text)
    except ValueError:
        keys = None
    if not isinstance(keys, dict):
        return text.strip() or None, None, None
    entry = keys.get(kind) or {}
    expires = entry.get("expiration time")
    try:
        expiry = datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None
    except ValueError:
        expiry = None
    return entry.get("key"), (keys.get("API") or {}).get("key"), expiry


def is_auth_failure(response: httpx.Response) -> bool:
    """Did the server reject the key (TorchServe: 400 + phrase; the auth front: 401)?

    Only TorchServe's own error body counts: the handler's `{"error", "detail"}` bodies echo what a
    client sent, and a client must not be able to make every caller rotate its key."""
    if response.status_code == 401:
        return True
    if response.status_code not in (400, 403):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return (isinstance(body, dict) and "error" not in body
            and _AUTH_PHRASE in str(body.get("message", "")).lower())


def error_detail(response: httpx.Response) -> tuple[str, str]:
    """(error code, human-readable detail) from our handler's `{"error","detail"}` body or
    TorchServe's own `{"code","type","message"}` body."""
    try:
        body = response.json()
    except ValueError:
        return f"http_{response.status_code}", response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        if "error" in body:
            return str(body["error"]), str(body.get("detail", ""))
        if "message" in body:
            return str(body.get("type") or f"http_{response.status_code}"), str(body["message"])
    return f"http_{response.status_code}", json.dumps(body, ensure_ascii=False)[:500]


async def send_authorized(
    http: httpx.AsyncClient, tokens: TokenSource, method: str, url: str, **kwargs
) -> httpx.Response:
    """Send one request with the current key; on an auth failure refresh the key (re-read the
    file, renew it when the file is TorchServe's) and send once more."""
    extra_headers = kwargs.pop("headers", None) or {}
    used = tokens.token()
    response = await http.request(method, url, headers=extra_headers | tokens.headers(), **kwargs)
    if is_auth_failure(response) and tokens.path is not None and await tokens.refresh(http, used):
        logger.info("Server rejected the %s key; retrying with a fresh one from %s", tokens.kind, tokens.path)
        response = await http.request(method, url, headers=extra_headers | tokens.headers(), **kwargs)
    return response


class AuthorizedClient:
    """One connection pool to one TorchServe API, with the token source for its kind of key."""

    kind: KeyKind

    def __init__(self, base_url: str, *, token: str | None = None, token_file: str | Path | None = None,
                 timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.tokens = TokenSource(token, token_file, kind=self.kind)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()


class PredictionClient(AuthorizedClient):
    """A client of TorchServe's prediction API: connection failures and 5xx are retried with
    back-off; a read timeout is not (the server is still working on it: a retry doubles the load);
    4xx is the request's own fault (`InferenceRejected`), anything else `InferenceUnavailable`."""

    kind: KeyKind = "inference"

    def __init__(self, base_url: str, *, token: str | None = None, token_file: str | Path | None = None,
                 timeout: float = 30.0, retries: int = 2, backoff: float = 0.5):
        super().__init__(base_url, token=token, token_file=token_file, timeout=timeout)
        self.retries = max(0, retries)
        self.backoff = backoff

    async def _predict(self, path: str, answer: type[Answer], **request: Any) -> Answer:
        """POST `request` (httpx keywords: json=, content=, headers=) to `path`; the answer parsed."""
        problem = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = await send_authorized(self._http, self.tokens, "POST", path, **request)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                problem = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
                if isinstance(exc, httpx.ReadTimeout):
                    logger.warning("Attempt %d/%d at %s timed out; not retried", attempt + 1, self.retries + 1, path)
                    break
                logger.warning("Attempt %d/%d at %s failed: %s", attempt + 1, self.retries + 1, path, problem)
                continue
            if response.status_code >= 500:
                error, detail = error_detail(response)
                problem = f"HTTP {response.status_code} {error}: {detail}"
                logger.warning("Attempt %d/%d at %s failed: %s", attempt + 1, self.retries + 1, path, problem)
                continue
            if response.status_code >= 400:
                error, detail = error_detail(response)
                raise InferenceRejected(detail or error, status=response.status_code, error=error)
            try:
                return answer.model_validate_json(response.content)
            except ValueError as exc:
                raise InferenceUnavailable(f"unexpected answer from {self.base_url}{path}: {exc}") from exc
        attempts = f"{attempt + 1} attempt{'s' if attempt else ''}"
        raise InferenceUnavailable(f"{self.base_url}{path} unavailable after {attempts}: {problem}")


class InferenceClient(PredictionClient):
    """Async client for the fleet model (contract 3): `POST /predictions/fleet`, the persona (and
    an optional pinned version) in the body.

    >>> async with InferenceClient("http://127.0.0.1:8080", token_file=".persona/serve/key_file.json") as c:
    ...     response = await c.reply("devops-dude", InferenceRequest(message="привет"))
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.5,
        model: str = FLEET_MODEL,
    ):
        super().__init__(base_url, token=token, token_file=token_file, timeout=timeout, retries=retries, backoff=backoff)
        self.model = model

    async def reply(self, persona: str, request: InferenceRequest, version: int | str | None = None) -> InferenceResponse:
        """The persona's reply (its serving version, or `version` pinned); raises `InferenceRejected`
        (4xx: e.g. unknown_persona) or `InferenceUnavailable`."""
        return await self._ask(persona, request, version, InferenceResponse)

    async def about(self, persona: str, version: int | str | None = None) -> PersonaAbout:
        """What the persona's serving version (or `version`) is - its base, when it was trained, how
        many facts it knows - without generating anything; raises as `reply` does."""
        return await self._ask(persona, InferenceRequest(about=True), version, PersonaAbout)

    async def _ask(self, persona: str, request: InferenceRequest, version: int | str | None, answer: type[Answer]) -> Answer:
        # Optional fields left at their defaults stay out of the body: a server that predates them
        # (a rolling upgrade) takes the request.
        body = request.model_dump(exclude_defaults=True) | {"persona": persona}
        if version is not None:
            body["version"] = version
        return await self._predict(f"/predictions/{self.model}", answer, json=body)
