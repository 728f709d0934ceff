"""PersonaModel status (contract 5): phases, conditions and the patches that move between them.

Conditions follow the Kubernetes convention: `lastTransitionTime` changes only when a
condition's status flips, so `kubectl describe` shows when a state began, not when it was
last re-confirmed.

- Trained: the latest generation's training Job succeeded (False while it runs or after it failed).
- RolledOut: the latest trained version serves on every replica.
- Ready: some version of the persona serves (it stays True while a newer version trains).
- Canary: how the canary's analysis stands: True (passing, or promoted), Unknown (waiting for data),
  False (failed: rolled back).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    PENDING = "Pending"  # a trained version waits for a ready serving pod
    TRAINING = "Training"
    ROLLING_OUT = "RollingOut"
    CANARY = "Canary"  # a trained version answers a share of the conversations while people judge it
    READY = "Ready"
    FAILED = "Failed"


# Reasons a person reads in `kubectl describe` and Events; the retryable ones name the failed step.
TRAINING_FAILED = "TrainingFailed"
ROLLOUT_FAILED = "RolloutFailed"
GATE_REJECTED = "GateRejected"
INVALID_SPEC = "InvalidSpec"
BASE_NOT_SERVED = "BaseNotServed"  # spec.baseModel is none of the chart's serving.bases: no Job, nothing to serve it
KNOWLEDGE_MISSING = "KnowledgeMissing"  # spec.knowledge.files not in the model store: no Job until they are


def now() -> str:
    return rfc3339(datetime.now(timezone.utc))


def rfc3339(moment: datetime | str) -> str:
    """The API server's timestamp format, also for a time the client re-serialised with "+00:00"."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 as the API server writes it ("Z") or as the client re-serialises it ("+00:00")."""
    return datetime.fromisoformat(value) if value else None


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def with_condition(
    conditions: list[dict[str, Any]], type_: str, value: bool | None, reason: str, message: str
) -> list[dict[str, Any]]:
    """`conditions` with `type_` set (None: Unknown); the others untouched, in their order."""
    text = "Unknown" if value is None else "True" if value else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != text
    updated = {
        "type": type_,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now() if changed else previous["lastTransitionTime"],
    }
    if previous is None:
        return [*conditions, updated]
    return [updated if c is previous else c for c in conditions]


class StatusUpdate:
    """Accumulates one merge patch of `.status`, starting from the current status."""

    def __init__(self, current: dict[str, Any] | None):
        self.current = dict(current or {})
        self.patch: dict[str, Any] = {}
        self._conditions = list(self.current.get("conditions") or [])

    def set(self, **fields: Any) -> StatusUpdate:
        self.patch.update(fields)
        return self

    def training(self, **fields: Any) -> StatusUpdate:
        """Update `lastTraining`, keeping its other fields (a merge patch merges nested objects)."""
        self.patch.setdefault("lastTraining", {}).update(fields)
        return self

    def condition(self, type_: str, value: bool | None, reason: str, message: str) -> StatusUpdate:
        self._conditions = with_condition(self._conditions, type_, value, reason, message)
        self.patch["conditions"] = self._conditions
        return self

    def ready_from(self, serving_version: str | None) -> StatusUpdate:
        """Ready mirrors whether any version serves."""
        if serving_version:
            return self.condition("Ready", True, "Serving", f"version {serving_version} serves")
        return self.condition("Ready", False, "NotServing", "no version serves yet")
