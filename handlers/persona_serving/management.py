"""TorchServe's management API, as `persona serve` uses it: reading what is loaded.

The models are loaded at start and the model API is off (persona_serving.server), so listing and
describing are all there is; single calls, not retried: the caller decides what a failure means.
The key comes from the same `TokenSource` the inference client uses (TorchServe's key file: its
`management` key; a mounted Secret: its content), re-read when the server rejects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from personafleet.client import AuthorizedClient, KeyKind, error_detail, send_authorized


class ManagementError(Exception):
    """A management call failed; `status` is the HTTP status (None when no answer came)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class ManagementClient(AuthorizedClient):
    """Async client for TorchServe's management API (port 8081 by default)."""

    kind: KeyKind = "management"

    def __init__(self, base_url: str, *, token: str | None = None, token_file: str | Path | None = None,
                 timeout: float = 120.0):
        super().__init__(base_url, token=token, token_file=token_file, timeout=timeout)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await send_authorized(self._http, self.tokens, method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ManagementError(f"{method} {self.base_url}{path}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code >= 400:
            _, detail = error_detail(response)
            raise ManagementError(
                f"{method} {path} -> HTTP {response.status_code}: {detail}", status=response.status_code
            )
        try:
            return response.json()
        except ValueError:
            return response.text

    async def describe(self, name: str) -> dict:
        """TorchServe's description of a loaded model, its workers (id, pid, status) included."""
        return (await self._call("GET", f"/models/{name}"))[0]

    async def list_models(self) -> list[dict]:
        """`[{"modelName", "modelUrl"}, ...]` for every registered model (all pages)."""
        models: list[dict] = []
        token: str | None = None
        while True:
            params = {"limit": 100} | ({"next_page_token": token} if token else {})
            page = await self._call("GET", "/models", params=params)
            models.extend(page.get("models", []))
            token = page.get("nextPageToken")
            if not token:
                return models
