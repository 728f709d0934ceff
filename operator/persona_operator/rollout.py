"""Rolling a persona version out to every TorchServe replica, and back when anything fails.

Order matters for zero failed requests: load the new version next to the old one everywhere,
smoke-test it, and only then switch each replica's default (TorchServe switches unversioned
traffic atomically). A failure before the last switch leaves the old default untouched; the new
version is then unregistered again so replicas do not carry a half-rolled-out model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_serving.management import ManagementClient, ManagementError
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable
from personafleet.inference import InferenceRequest

from persona_operator.settings import Settings
from persona_operator.spec import ServingSection

SMOKE_MESSAGE = "Привет! Как дела?"


@dataclass(frozen=True)
class Replica:
    """One TorchServe pod, addressed directly (not through the Service) so each one is checked."""

    pod: str
    management_url: str
    inference_url: str

    @classmethod
    def from_pod(cls, pod: dict[str, Any], settings: Settings) -> Replica:
        ip = pod["status"]["podIP"]
        host = f"[{ip}]" if ":" in ip else ip
        return cls(
            pod=pod["metadata"]["name"],
            management_url=f"http://{host}:{settings.serving_management_port}",
            inference_url=f"http://{host}:{settings.serving_inference_port}",
        )


class ReplicaFailure(Exception):
    """One replica failed a rollout step."""

    def __init__(self, replica: str, detail: str):
        super().__init__(f"{replica}: {detail}")
        self.replica, self.detail = replica, detail


class RolloutFailed(Exception):
    """A rollout step failed on a replica; the new version has been withdrawn again."""

    def __init__(self, step: str, replica: str, detail: str):
        super().__init__(f"{step} failed on {replica}: {detail}")
        self.step, self.replica, self.detail = step, replica, detail


def model_url(persona: str, version: int) -> str:
    """The .mar's path relative to the model store (contract 2)."""
    return f"{persona}/v{version}/{persona}.mar"


def _version_key(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        return -1.0


class Rollout:
    """TorchServe management and inference calls for one operator."""

    def __init__(self, settings: Settings, logger: logging.Logger | None = None):
        self.token_file: Path | None = settings.serving_token_file
        self.timeout = settings.rollout_timeout_seconds
        self.logger = logger or logging.getLogger(__name__)

    def _management(self, replica: Replica) -> ManagementClient:
        return ManagementClient(replica.management_url, token_file=self.token_file, timeout=self.timeout)

    async def roll_out(
        self,
        persona: str,
        version: int,
        replicas: Sequence[Replica],
        *,
        serving: ServingSection,
        smoke_test: bool,
        previous: int | None,
    ) -> None:
        """Make `version` the default of `persona` on every replica, or on none of them."""
        step = "register"
        try:
            # Every replica loads at once; all are waited for, so none is still loading when withdrawn.
            loaded = await asyncio.gather(*(self._on(r, self._load(r, persona, version, serving)) for r in replicas),
                                          return_exceptions=True)
            for outcome in loaded:
                if isinstance(outcome, BaseException):
                    raise outcome
            if smoke_test:
                step = "smoke test"
                for replica in replicas:
                    await self._on(replica, self._smoke_test(replica, persona, version))
            step = "set default"
            for replica in replicas:
                await self._on(replica, self._set_default(replica, persona, version))
        except ReplicaFailure as failure:
            await self.withdraw(persona, version, replicas, previous)
            raise RolloutFailed(step, failure.replica, failure.detail) from failure

    @staticmethod
    async def _on(replica: Replica, step: Awaitable[None]) -> None:
        """Run one replica's step; a failure names the replica."""
        try:
            await step
        except (ManagementError, InferenceRejected, InferenceUnavailable, TimeoutError) as exc:
            raise ReplicaFailure(replica.pod, str(exc) or exc.__class__.__name__) from exc

    async def _load(self, replica: Replica, persona: str, version: int, serving: ServingSection) -> None:
        """Register the version unless the replica has it, then wait until its workers are ready."""
        async with self._management(replica) as management:
            if await self._versions(management, persona, str(version)) is None:
                try:
                    await management.register(
                        model_url(persona, version),
                        initial_workers=serving.workers,
                        synchronous=True,
                        batch_size=serving.batch_size,
                        max_batch_delay_ms=serving.max_batch_delay_ms,
                        response_timeout_s=serving.response_timeout_seconds,
                    )
                except ManagementError as exc:
                    if exc.status != 409:  # 409: a registration before a restart is still loading it
                        raise
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while True:
                described = await self._versions(management, persona, str(version)) or []
                ready = [w for d in described for w in d.get("workers", []) if w.get("status") == "READY"]
                if len(ready) >= serving.workers:
                    return
                if loop.time() > deadline:
                    raise TimeoutError(f"{len(ready)}/{serving.workers} workers ready after {self.timeout:.0f} s")
                await asyncio.sleep(0.5)

    async def _set_default(self, replica: Replica, persona: str, version: int) -> None:
        async with self._management(replica) as management:
            await management.set_default(persona, str(version))

    async def _smoke_test(self, replica: Replica, persona: str, version: int) -> None:
        async with InferenceClient(replica.inference_url, token_file=self.token_file, timeout=60.0, retries=1) as client:
            # Naming the persona makes the handler check that the archive really serves it.
            request = InferenceRequest(persona=persona, message=SMOKE_MESSAGE)
            response = await client.reply(persona, request, version=str(version))
        if _version_key(response.model_version) != float(version):
            raise InferenceRejected(f"answered as version {response.model_version!r}, expected {version}")
        self.logger.info("Smoke test of %s v%s on %s: %r", persona, version, replica.pod, response.reply[:60])

    @staticmethod
    async def _versions(management: ManagementClient, persona: str, version: str | None = None) -> list[dict] | None:
        """`describe`, with "not registered" as None instead of an error."""
        try:
            return await management.describe(persona, version)
        except ManagementError as exc:
            if exc.status == 404:
                return None
            raise

    async def restore(self, persona: str, version: int, replicas: Sequence[Replica], serving: ServingSection) -> list[str]:
        """Make `version` the default again on every replica where it is not (a pod that started
        from an older models.json, or a version changed by hand); returns the pods it fixed."""
        fixed = []
        for replica in replicas:
            async with self._management(replica) as management:
                described = await self._versions(management, persona) or []
            if any(d["isDefault"] and _version_key(d["modelVersion"]) == version for d in described):
                continue
            await self._load(replica, persona, version, serving)
            await self._set_default(replica, persona, version)
            fixed.append(replica.pod)
        return fixed

    async def withdraw(self, persona: str, version: int, replicas: Sequence[Replica], previous: int | None) -> None:
        """Take `version` off every replica, the previous version (if any) being the default again."""
        for replica in replicas:
            try:
                async with self._management(replica) as management:
                    versions = {d["modelVersion"] for d in await self._versions(management, persona) or []}
                    mine = next((v for v in versions if _version_key(v) == version), None)
                    if mine is None:
                        continue
                    back = next((v for v in versions if previous is not None and _version_key(v) == previous), None)
                    if back is not None:
                        await management.set_default(persona, back)
                    await management.unregister(persona, mine)
            except ManagementError as exc:
                self.logger.warning("Could not withdraw %s v%s from %s: %s", persona, version, replica.pod, exc)

    async def prune(self, persona: str, replicas: Sequence[Replica], keep: int, serving: int) -> list[str]:
        """Unregister all but the newest `keep` versions (never the serving one); returns what went."""
        removed = []
        for replica in replicas:
            async with self._management(replica) as management:
                described = await self._versions(management, persona) or []
                versions = sorted({d["modelVersion"] for d in described}, key=_version_key, reverse=True)
                for old in versions[keep:]:
                    if _version_key(old) == serving:
                        continue
                    await management.unregister(persona, old)
                    removed.append(f"{replica.pod}:{old}")
        return removed

    async def remove_persona(self, persona: str, replicas: Sequence[Replica]) -> None:
        """Unregister every version of `persona`. TorchServe refuses to remove the default version
        while others remain, so what it refuses is tried again once the rest is gone."""
        for replica in replicas:
            async with self._management(replica) as management:
                pending = [d["modelVersion"] for d in await self._versions(management, persona) or []]
                while pending:
                    refused: list[str] = []
                    for version in pending:
                        try:
                            await management.unregister(persona, version)
                        except ManagementError:
                            if len(pending) == 1:
                                raise
                            refused.append(version)
                    if len(refused) == len(pending):
                        raise ManagementError(f"{replica.pod} refused to unregister {persona} {refused}")
                    pending = refused
