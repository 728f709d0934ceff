"""A canary rollout's state and its next move (issue 23), free of I/O so each rule is tested directly.

The state lives in `status.canary` (the operator's only memory, as everywhere in docs/operator.md):

    version, previousVersion   the canary and the version it may replace
    step, steps                the step now judged (1..steps); step steps+1 is the promotion
    weight, weights            the canary's share of the conversations, and each version's share
    stepStartedAt              when the step began: its analysis window and its clocks start here
    analysis                   the last measurement, its verdict and when it was taken

The routing table follows the status: a pass first records a move in the status, then writes the
table, so an operator stopped in between finds the status ahead and writes the table again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from persona_operator.analysis import Judgment, Measurement
from persona_operator.spec import CanarySection
from persona_operator.status import parse_time, rfc3339

# Condition reasons of the `Canary` condition beside the analysis' own (persona_operator.analysis).
PROMOTED = "Promoted"
ROLLED_BACK = "CanaryRolledBack"  # RolledOut=False and the Warning Event of a rolled-back canary
TIMED_OUT = "AnalysisTimedOut"
SUPERSEDED = "Superseded"
MESSAGE_CHARS = 1000  # the CRD's bound on status.canary.analysis.message


@dataclass(frozen=True)
class CanaryState:
    version: int
    previous: int
    step: int
    steps: int
    weight: int
    started_at: datetime

    @classmethod
    def first(cls, version: int, previous: int, spec: CanarySection, now: datetime) -> CanaryState:
        return cls(version, previous, 1, len(spec.steps), spec.steps[0], now)

    @classmethod
    def from_status(cls, canary: dict[str, Any]) -> CanaryState:
        return cls(int(canary["version"]), int(canary["previousVersion"]), int(canary["step"]), int(canary["steps"]),
                   int(canary["weight"]), parse_time(canary["stepStartedAt"]))  # type: ignore[arg-type]

    @property
    def promoting(self) -> bool:
        """Every step passed: the canary becomes the serving version."""
        return self.step > self.steps

    @property
    def weights(self) -> dict[int, int]:
        return {self.previous: 100 - self.weight, self.version: self.weight}

    def next(self, spec: CanarySection, now: datetime) -> CanaryState:
        """The following step, or the promotion after the last one."""
        step = self.step + 1
        return replace(self, step=step, weight=spec.steps[step - 1] if step <= len(spec.steps) else 100, started_at=now)

    def elapsed(self, now: datetime) -> float:
        return max(0.0, (now - self.started_at).total_seconds())

    def describe(self) -> str:
        if self.promoting:
            return f"version {self.version} passed every step and is being promoted"
        return (f"version {self.version} answers {self.weight}% of conversations (step {self.step}/{self.steps}), "
                f"version {self.previous} the rest")

    def status(self, measurement: Measurement | None = None, judgment: Judgment | None = None,
               checked_at: datetime | None = None) -> dict[str, Any]:
        """`status.canary` in full: a merge patch replaces every field, so nothing of an earlier canary stays."""
        analysis = None
        if measurement is not None and judgment is not None:
            analysis = {**measurement.status(), "verdict": judgment.reason, "message": judgment.message[:MESSAGE_CHARS],
                        "checkedAt": rfc3339(checked_at) if checked_at else None}
        return {"version": str(self.version), "previousVersion": str(self.previous), "step": self.step,
                "steps": self.steps, "weight": self.weight,
                # A list, not a map: a merge patch replaces a list whole, but would keep an earlier canary's keys.
                "weights": [{"version": str(v), "weight": w} for v, w in sorted(self.weights.items())],
                "stepStartedAt": rfc3339(self.started_at), "analysis": analysis}


@dataclass(frozen=True)
class Move:
    action: Literal["advance", "rollback", "wait"]
    reason: str
    message: str
    after: float = 0.0  # seconds until the next look, when waiting


def next_move(state: CanaryState, judgment: Judgment, spec: CanarySection, now: datetime) -> Move:
    """Roll back on a failed analysis, or when no judgment came `timeoutSeconds` after the step's
    minimum time; advance on a passed analysis once the minimum time is over; else wait."""
    elapsed, interval = state.elapsed(now), spec.analysis.interval_seconds
    if judgment.outcome == "fail":
        return Move("rollback", judgment.reason, judgment.message)
    if judgment.outcome == "pass":
        if elapsed >= spec.min_step_seconds:
            return Move("advance", judgment.reason, judgment.message)
        return Move("wait", judgment.reason, judgment.message, min(interval, spec.min_step_seconds - elapsed))
    limit = spec.min_step_seconds + spec.analysis.timeout_seconds
    if elapsed >= limit:
        return Move("rollback", TIMED_OUT, f"no judgment within {limit:g} s of step {state.step}: {judgment.message}")
    return Move("wait", judgment.reason, judgment.message, min(interval, limit - elapsed))
