"""TorchServe's management API, as the operator and `persona serve` use it.

Registering, describing, switching the default version and unregistering are single calls, not
retried: the caller (a kopf handler, the launcher) decides what a failure means. The key comes
from the same `TokenSource` the inference client uses (TorchServe's key file: its `management`
key; a mounted Secret: its content), re-read when the server rejects it.
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

    async def register(
        self,
        url: str,
        *,
        initial_workers: int | None = 1,
        synchronous: bool = True,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
        response_timeout_s: int | None = None,
    ) -> dict:
        """Register a .mar (`url` relative to the model store, or a URL `allowed_urls` permits).
        Name and version come from the archive. Settings left None keep the archive's
        `model-config.yaml` (minWorkers, batchSize, maxBatchDelay, responseTimeout)."""
        params: dict[str, Any] = {"url": url, "synchronous": str(synchronous).lower()}
        if initial_workers is not None:
            params["initial_workers"] = initial_workers
        if batch_size is not None:
            params["batch_size"] = batch_size
        if max_batch_delay_ms is not None:
            params["max_batch_delay"] = max_batch_delay_ms
        if response_timeout_s is not None:
            params["response_timeout"] = response_timeout_s
        return await self._call("POST", "/models", params=params)

    async def describe(self, name: str, version: str | None = None) -> list[dict]:
        """TorchServe's description of one version, or of every version (workers included), each
        with an `isDefault` flag TorchServe itself does not give."""
        if version is not None:
            return await self._call("GET", f"/models/{name}/{version}")
        described = await self._call("GET", f"/models/{name}/all")
        default = (await self._call("GET", f"/models/{name}"))[0]["modelVersion"]
        return [entry | {"isDefault": entry["modelVersion"] == default} for entry in described]

    async def set_default(self, name: str, version: str) -> dict:
        """Send unversioned traffic to `version` (TorchServe switches atomically)."""
        return await self._call("PUT", f"/models/{name}/{version}/set-default")

    async def unregister(self, name: str, version: str) -> dict:
        return await self._call("DELETE", f"/models/{name}/{version}")

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
