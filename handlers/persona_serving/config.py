"""What a .mar tells its handler besides the persona: where the base model is, whether to merge
the adapter, and the serving limits. `persona package` writes it as `serving.json`; the handler
reads it in `initialize`. Light (pydantic only) so the packager imports it without torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from personafleet.inference import GenerationLimits

SERVING_FILE = "serving.json"
ADAPTER_DIR = "adapter"
BASE_DIR = "base"


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    base: str = Field(description="hub id or mounted path of the base model; ignored when bundled")
    bundled_base: bool = Field(False, description="the base model travels inside the .mar under base/")
    merge_adapter: bool = Field(True, description="fold LoRA into the base weights at load: no adapter cost per token")
    max_input_tokens: int = Field(512, ge=16, description="longer prompts lose their oldest tokens")
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
