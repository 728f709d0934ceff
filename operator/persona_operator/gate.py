"""The rollout gate: a new version serves only if it is not measurably worse than the current one.

It reads the training reports the Jobs leave in the model store (contract 4: `run/report.json`
with `eval.after.loss` and `eval.after.perplexity`, and the `fidelity` block of `persona eval`:
`fidelity.score`, the share of replies that read as the persona, and `fidelity.leaks.count`, the
replies that repeat personal data of the training chat). Every figure that fails is named in the
verdict, so the status says what to fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personafleet.errors import PersonaError
from persona_operator.spec import RolloutSection


@dataclass(frozen=True)
class Evaluation:
    """What the gate and the status need from a training report. `fidelity` and `leaks` are None
    when the report has no such figure; `unmeasured` then says why."""

    loss: float
    perplexity: float | None
    fidelity: float | None = None
    leaks: int | None = None
    unmeasured: str | None = None


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
        report = json.loads(path.read_text(encoding="utf-8"))
        after = report["eval"]["after"]
        loss = float(after["loss"])
    except FileNotFoundError:
        raise PersonaError(f"no training report at {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PersonaError(f"{path} has no usable eval.after.loss ({exc.__class__.__name__}: {exc})") from None
    if not math.isfinite(loss):
        raise PersonaError(f"{path}: eval.after.loss is {loss}")
    perplexity = after.get("perplexity")
    fidelity, leaks, unmeasured = _fidelity(report.get("fidelity"))
    return Evaluation(loss=loss, perplexity=float(perplexity) if perplexity is not None else None,
                      fidelity=fidelity, leaks=leaks, unmeasured=unmeasured)


def _fidelity(block: Any) -> tuple[float | None, int | None, str | None]:
    """(score, leaks, why a figure is missing) of a report's fidelity block."""
    if not isinstance(block, dict):
        return None, None, "the report has no fidelity block (trained before `persona eval`, or with fidelity_prompts: 0)"
    if "skipped" in block:
        return None, None, f"fidelity not judged: {block['skipped']}"
    score, leaks = block.get("score"), (block.get("leaks") or {}).get("count")
    why = None
    if score is None:
        why = f"authorship not measured: {(block.get('authorship') or {}).get('skipped', 'no score in the report')}"
    return (float(score) if score is not None else None), (int(leaks) if leaks is not None else None), why


def judge(candidate: Evaluation, serving: Evaluation | None, rules: RolloutSection) -> Verdict:
    """Pass unless a figure fails its rule: the eval loss more than `maxEvalLossIncrease` above the
    serving version's, more leaking replies than `maxLeaks`, fidelity below `minFidelity` or more
    than `maxFidelityDrop` below the serving version's. A rule that needs a figure the report does
    not have fails (a version is never waved through unjudged), except `maxLeaks` on reports
    without a fidelity block, which passes with a note, so reports from before fidelity still roll out."""
    failed, passed = [], []
    if serving is None:
        passed.append(f"eval loss {candidate.loss:.4f}; no version serves yet")
    else:
        limit = serving.loss * (1 + rules.max_eval_loss_increase)
        if candidate.loss <= limit:
            passed.append(f"eval loss {candidate.loss:.4f} within {limit:.4f} "
                          f"(serving {serving.loss:.4f} +{rules.max_eval_loss_increase:.0%})")
        else:
            failed.append(f"eval loss {candidate.loss:.4f} is worse than the serving version's {serving.loss:.4f} "
                          f"by more than {rules.max_eval_loss_increase:.0%} (limit {limit:.4f})")

    if candidate.leaks is None:
        passed.append(f"leaks not counted ({candidate.unmeasured})")
    elif candidate.leaks > rules.max_leaks:
        failed.append(f"{candidate.leaks} generated replies leak personal data of the training chat "
                      f"(maxLeaks {rules.max_leaks})")
    else:
        passed.append(f"{candidate.leaks} leaking replies")

    if rules.min_fidelity is not None or rules.max_fidelity_drop is not None:
        if candidate.fidelity is None:
            failed.append(f"fidelity is required by the rollout rules but was not measured ({candidate.unmeasured})")
        else:
            failed += _fidelity_failures(candidate.fidelity, serving, rules)
            passed.append(f"fidelity {candidate.fidelity:.2f}")
    elif candidate.fidelity is not None:
        passed.append(f"fidelity {candidate.fidelity:.2f}")
    return Verdict(False, "; ".join(failed)) if failed else Verdict(True, "; ".join(passed))


def _fidelity_failures(fidelity: float, serving: Evaluation | None, rules: RolloutSection) -> list[str]:
    failures = []
    if rules.min_fidelity is not None and fidelity < rules.min_fidelity:
        failures.append(f"fidelity {fidelity:.2f} is below minFidelity {rules.min_fidelity:.2f}")
    if rules.max_fidelity_drop is not None and serving is not None and serving.fidelity is not None:
        drop = serving.fidelity - fidelity
        if drop > rules.max_fidelity_drop:
            failures.append(f"fidelity {fidelity:.2f} is {drop:.2f} below the serving version's "
                            f"{serving.fidelity:.2f} (maxFidelityDrop {rules.max_fidelity_drop:.2f})")
    return failures
