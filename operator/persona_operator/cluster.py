"""The Kubernetes API calls the operator makes, through the official `kubernetes` client.

The client is synchronous; each call runs in a worker thread so kopf's event loop stays free.
Objects come back as plain dicts in the API's camelCase, the same shape kopf hands to handlers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from personafleet.errors import PersonaError

GROUP, VERSION, PLURAL = "personafleet.io", "v1alpha1", "personamodels"
MERGE_PATCH = "application/merge-patch+json"


def load_config() -> None:
    """In a pod, the service account; elsewhere, the kubeconfig (`KUBECONFIG` or ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise PersonaError(f"no Kubernetes API to talk to: not in a pod, and no usable kubeconfig ({exc})") from None


class Cluster:
    """One namespace's worth of the objects the operator reads and writes."""

    def __init__(self, namespace: str, api_client: kubernetes.client.ApiClient | None = None):
        self.namespace = namespace
        self.api = api_client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    async def _call(self, method, *args, **kwargs) -> Any:
        return await asyncio.to_thread(method, *args, **kwargs)

    def _plain(self, obj: Any) -> Any:
        return self.api.sanitize_for_serialization(obj)

    # ---- PersonaModels -------------------------------------------------------------------
    async def persona_model(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_status(self, name: str, status: dict[str, Any]) -> None:
        await self._call(
            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, self.namespace, PLURAL, name,
            {"status": status}, _content_type=MERGE_PATCH,
        )

    # ---- training Jobs -------------------------------------------------------------------
    async def jobs(self, selector: str) -> list[dict[str, Any]]:
        result = await self._call(self.batch.list_namespaced_job, self.namespace, label_selector=selector)
        return self._plain(result)["items"]

    async def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a Job; if one of that name exists already (a race, a restart), return that one."""
        try:
            created = await self._call(self.batch.create_namespaced_job, self.namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            created = await self._call(self.batch.read_namespaced_job, manifest["metadata"]["name"], self.namespace)
        return self._plain(created)

    async def delete_job(self, name: str) -> None:
        """Stop a Job and its pods (Background: the garbage collector removes the pods)."""
        body = kubernetes.client.V1DeleteOptions(propagation_policy="Background")
        try:
            await self._call(self.batch.delete_namespaced_job, name, self.namespace, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ---- serving -------------------------------------------------------------------------
    async def ready_pods(self, selector: str) -> list[dict[str, Any]]:
        """Running pods matching `selector` whose Ready condition is True and that have an IP."""
        result = self._plain(await self._call(self.core.list_namespaced_pod, self.namespace, label_selector=selector))
        ready = []
        for pod in result["items"]:
            status = pod.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if status.get("phase") == "Running" and conditions.get("Ready") == "True" and status.get("podIP"):
                ready.append(pod)
        return sorted(ready, key=lambda pod: pod["metadata"]["name"])
