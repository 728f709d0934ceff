"""The rollout gate: a new version serves only if it is not measurably worse than the current one.

It reads the training reports the Jobs leave in the model store (contract 4: `run/report.json` with
`eval.after.loss` and `eval.after.perplexity`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from personafleet.errors import PersonaError


@dataclass(frozen=True)
class Evaluation:
    """What the gate and the status need from a training report."""

    loss: float
    perplexity: float | None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str


def report_path(store: Path, persona: str, version: int) -> Path:
    return Path(store) / persona / f"v{version}" / "run" / "report.json"


def read_evaluation(store: Path, persona: str, version: int) -> Evaluation:
    """Evaluation after training of `persona` version `version`; a missing or broken report is an error."""
    path = report_path(store, persona, version)
    try:
        after = json.loads(path.read_text(encoding="utf-8"))["eval"]["after"]
        loss = float(after["loss"])
    except FileNotFoundError:
        raise PersonaError(f"no training report at {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PersonaError(f"{path} has no usable eval.after.loss ({exc.__class__.__name__}: {exc})") from None
    if not math.isfinite(loss):
        raise PersonaError(f"{path}: eval.after.loss is {loss}")
    perplexity = after.get("perplexity")
    return Evaluation(loss=loss, perplexity=float(perplexity) if perplexity is not None else None)


def judge(candidate: Evaluation, serving: Evaluation | None, max_increase: float) -> Verdict:
    """Pass unless the candidate's eval loss exceeds the serving one's by more than `max_increase` (relative)."""
    if serving is None:
        return Verdict(True, f"eval loss {candidate.loss:.4f}; no version serves yet")
    limit = serving.loss * (1 + max_increase)
    if candidate.loss <= limit:
        return Verdict(True, f"eval loss {candidate.loss:.4f} within {limit:.4f} (serving {serving.loss:.4f} +{max_increase:.0%})")
    return Verdict(
        False,
        f"eval loss {candidate.loss:.4f} is worse than the serving version's {serving.loss:.4f} "
        f"by more than {max_increase:.0%} (limit {limit:.4f})",
    )
