"""What the fleet archive tells its handler: where the base model and the model store are, how
many adapters a worker keeps, and the serving limits. `persona serve` writes it as `serving.json`
into `fleet.mar`; the handler reads it in `initialize`. Light (pydantic only) so the archive
builder imports it without torch."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from personafleet.inference import GenerationLimits
from personafleet.lora import MAX_LORA_RANK
from personafleet.reply_rules import ReplyFilterRules

SERVING_FILE = "serving.json"
BASE_DIR = "base"
# Set by `persona serve` for its workers: the model store wins over the archive's record, so one
# archive serves a store mounted anywhere.
MODEL_STORE_ENV = "PERSONA_MODEL_STORE"
DEFAULT_MAX_PERSONA_LABELS = 100


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="hub id or mounted path of the base model; ignored when bundled")
    bundled_base: bool = Field(False, description="the base model travels inside the .mar under base/")
    model_store: str | None = Field(None, description=f"the store of published versions; ${MODEL_STORE_ENV} overrides it")
    max_resident_adapters: int = Field(32, ge=1, description="adapter slots of a worker (LRU); the next adapter evicts the oldest")
    max_lora_rank: int = Field(MAX_LORA_RANK, ge=1, le=MAX_LORA_RANK, description="widest adapter rank a slot takes; wider ones are refused")
    max_host_adapters: int = Field(0, ge=0, description="adapters kept in (pinned, on CUDA) host memory so a slot miss is a copy, not a disk read; 0: off")
    max_persona_labels: int = Field(DEFAULT_MAX_PERSONA_LABELS, ge=0, description="personas with their own metrics "
                                    'label; the rest are persona="other" (persona_serving.metrics.persona_label)')
    max_input_tokens: int = Field(512, ge=16, description="longer prompts lose their oldest tokens")
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    max_cached_tokens: int = Field(
        16384, ge=1, description="key/value cache columns a worker's live rows may reserve (prompt + reply cap each, "
        "padded to the longest); requests over it wait. FRED-T5-large in bf16: ~96 KB per column")
    reply_filter: ReplyFilterRules | None = Field(None, description="the fleet's reply filter, added to each persona's")

    @model_validator(mode="after")
    def _one_request_fits(self) -> FleetConfig:
        needed = self.max_input_tokens + self.limits.max_new_tokens + 1
        if self.max_cached_tokens < needed:
            raise ValueError(f"max_cached_tokens={self.max_cached_tokens} cannot hold one request of "
                             f"{self.max_input_tokens} prompt + {self.limits.max_new_tokens} reply tokens ({needed})")
        return self

    def store(self) -> Path:
        """Where adapters are loaded from."""
        where = os.environ.get(MODEL_STORE_ENV) or self.model_store
        if not where:
            raise ValueError(f"no model store: set {MODEL_STORE_ENV} or model_store in {SERVING_FILE}")
        return Path(where)
