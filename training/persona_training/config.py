"""`persona train --config train.yaml`: every knob of a training run, typed and validated.

The keys are the snake_case names of the PersonaModel CR's `training` section (the operator
writes its Job's train.yaml from it), plus `persona` (the name, description and prompt template
that serving renders with) and a few run-loop settings. Unknown keys are refused so a typo
never trains silently with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from personafleet.errors import PersonaError, first_error
from personafleet.knowledge import KnowledgeSource
from personafleet.lora import MAX_LORA_RANK
from personafleet.persona import PersonaSpec
from persona_training.fidelity import MIN_PROMPTS

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "linear", "constant"]


class TrainConfig(BaseModel):
    """Defaults are tuned for the embedded tiny bases on a 2-core CPU (see `persona init-base`);
    for FRED-T5-large or ruGPT-3 on a GPU lower `learning_rate` (e.g. 3e-4) and raise `batch_size`.
    With a causal base, `max_source_tokens + max_target_tokens` is the longest training sequence."""

    model_config = ConfigDict(extra="forbid")

    persona: PersonaSpec = Field(default_factory=PersonaSpec)
    knowledge: KnowledgeSource | None = Field(
        None, description="facts retrieved into every prompt (issue 14); also `persona train --knowledge FILE`")

    # LoRA (peft)
    lora_rank: int = Field(16, ge=1, le=MAX_LORA_RANK, description="the fleet's slots take ranks up to MAX_LORA_RANK")
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, min_length=1, description="modules LoRA wraps; default: PEFT's for the base's model type (t5: q, v; "
        "llama: q_proj, v_proj; gpt2: c_attn)")

    # optimisation
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Schedule = "cosine"
    warmup_steps: int = Field(20, ge=0, description="cut to half the run when the run is shorter (train.warmup_for)")
    epochs: float = Field(1.0, gt=0, description="passes over the training set, unless max_steps is set")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(16, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 13

    # memory and speed
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    load_in_8bit: bool = Field(False, description="quantise the frozen base (CUDA + bitsandbytes only)")
    max_source_tokens: int = Field(256, ge=8, description="longer prompts are truncated")
    max_target_tokens: int = Field(64, ge=2, description="longer replies are truncated")
    length_group_size: int = Field(50, ge=1, description="batches sorted by length within groups of this many")

    # bookkeeping
    eval_every: int = Field(50, ge=1, description="optimizer steps between validation passes")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    fidelity_prompts: int = Field(200, ge=0, description="most held-out prompts the fidelity evaluation judges at the end (0: none)")

    @model_validator(mode="after")
    def _fidelity_can_judge(self) -> TrainConfig:
        if 0 < self.fidelity_prompts < MIN_PROMPTS:
            raise ValueError(f"fidelity_prompts ({self.fidelity_prompts}) is below the {MIN_PROMPTS} prompts "
                             f"a fidelity figure needs (0 turns the evaluation off)")
        return self

    def with_knowledge_files(self, files: list[Path]) -> TrainConfig:
        """The config with more knowledge files (`--knowledge`), after those train.yaml names."""
        if not files:
            return self
        source = self.knowledge or KnowledgeSource()
        return self.model_copy(update={"knowledge": source.model_copy(update={"files": [*source.files, *files]})})

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation


def load_config(path: Path | None) -> TrainConfig:
    """Read a YAML (or JSON) config; no path means the defaults. Problems become one line."""
    if path is None:
        return TrainConfig()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersonaError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaError(f"{path}: cannot read config ({exc})") from None
    except RecursionError:  # the YAML composer recurses once per level
        raise PersonaError(f"{path}: nested too deeply to be a training config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PersonaError(f"{path}: not valid YAML{where}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PersonaError(f"{path}: a training config is a mapping of settings, got {type(document).__name__}")
    try:
        return TrainConfig.model_validate(document)
    except ValidationError as exc:
        raise PersonaError(f"{path}: {first_error(exc, 'config')}") from None
