"""`persona eval --run RUN [--data DIR] [--base-only]`: the fidelity evaluation of a finished run.

`persona train` judges its adapter at the end with the model it holds; this loads a run from
disk (base + adapter, the run's config and persona) to judge it again, on other data, or to
measure the base alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personafleet import knowledge as knowledge_store
from personafleet.errors import PersonaError
from personafleet.family import load_family
from personafleet.persona import PERSONA_FILE, PersonaSpec
from persona_training import report as reports
from persona_training.authorship import read_authored_texts
from persona_training.config import TrainConfig
from persona_training.data import load_dialogues
from persona_training.fidelity import DEFAULT_PROMPTS, evaluate_fidelity
from persona_training.modeling import load_base_model, load_tokenizer, pick_hardware, quiet_peft


def evaluate_run(run_dir: Path, data_dirs: Sequence[Path] = (), *, prompts: int = DEFAULT_PROMPTS,
                 base_only: bool = False) -> dict[str, Any]:
    """`persona eval`: judge a finished run on its data (or `data_dirs`). The block goes into the
    run's report.json and model card, unless `base_only` (the floor alone, nothing written)."""
    report = _read_report(run_dir)
    config = TrainConfig.model_validate(report["config"])
    dirs = [Path(d) for d in data_dirs] or [Path(d) for d in report["data"]["sources"]]
    dialogues = load_dialogues(dirs)  # bad data fails before any model loads
    persona = PersonaSpec.model_validate_json((run_dir / PERSONA_FILE).read_text(encoding="utf-8"))
    hardware = pick_hardware(config)
    family = load_family(report["base_model"])
    tokenizer = load_tokenizer(str(run_dir), family)
    model = load_base_model(report["base_model"], family, config, hardware)
    if not base_only:
        from peft import PeftModel

        with quiet_peft():
            model = PeftModel.from_pretrained(model, str(run_dir))
    block = evaluate_fidelity(
        model, tokenizer, family, dialogues, read_authored_texts(dirs), persona, knowledge=knowledge_store.load(run_dir),
        max_source_tokens=config.max_source_tokens, device=hardware.device, autocast=hardware.autocast(),
        prompts=prompts, base_only=base_only, seed=config.seed, run_dir=None if base_only else run_dir)
    if not base_only:
        report["fidelity"] = block
        reports.write_report(run_dir, report)
        (run_dir / reports.MODEL_CARD_FILE).write_text(reports.model_card(report), encoding="utf-8")
    return block


def _read_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / reports.REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        report["config"], report["base_model"], report["data"]["sources"]  # noqa: B018 - what eval needs
    except FileNotFoundError:
        raise PersonaError(f"{path} is missing: --run names a `persona train` output directory") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PersonaError(f"{path} is not a training report ({exc.__class__.__name__}: {exc})") from None
    if not (run_dir / PERSONA_FILE).is_file():
        raise PersonaError(f"{run_dir / PERSONA_FILE} is missing: --run names a `persona train` output directory")
    return report
