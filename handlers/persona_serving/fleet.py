"""One base model and the LoRA adapters loaded onto it: the fleet worker's model, without TorchServe.

The base is loaded once (bf16 on CUDA, fp32 on CPU) through its family's auto class
(`personafleet.family`: seq2seq or causal), which also decides how prompts are encoded and how
`generate` output is cut to the reply; each published version of a persona
(`STORE/<persona>/v<N>/`, contract 1) becomes one named PEFT adapter, kept UNMERGED so that one
padded `generate` can answer rows of different personas (`adapter_names=[...]`, one per row).
Anything wrong with a version folder - missing, half-published, corrupt, or an adapter whose
rank/target modules do not fit this base - is an `AdapterUnavailable` for the requests that
asked for it; the adapters already loaded are untouched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from pydantic import ValidationError
from transformers import AutoTokenizer

from persona_serving.decoding import decode_replies
from persona_serving.requests import PersonaVersion
from personafleet import knowledge
from personafleet.errors import PersonaError
from personafleet.family import load_base, load_family
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.routing import version_dir
from personafleet.store import ADAPTER_DIR, published_version

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class AdapterUnavailable(Exception):
    """A version that cannot be served from this worker (the reason is for the client and the log)."""


def pick_device(gpu_id: int | None) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 (fp16 where bf16 is missing) when TorchServe gave us a GPU, else CPU fp32."""
    if gpu_id is not None and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device(f"cuda:{gpu_id}"), dtype
    return torch.device("cpu"), torch.float32


class FleetModel:
    def __init__(self, base: str, device: torch.device, dtype: torch.dtype, max_input_tokens: int = 512):
        self.base_name, self.device, self.max_input_tokens = base, device, max_input_tokens
        self.family = load_family(base)
        self.tokenizer = self.family.prepare_tokenizer(AutoTokenizer.from_pretrained(base), base)
        self.chat = self.family.chat_formatter(self.tokenizer)  # for personas whose template is the chat one
        self.base = load_base(self.family, base, dtype=dtype).to(device).eval()
        self.model: PeftModel | None = None  # wraps `base` once the first adapter arrives

    def load(self, store: Path, persona: str, version: int) -> PersonaVersion:
        """Read a published version and load its adapter; AdapterUnavailable says why not."""
        folder = version_dir(store, persona, version)
        try:
            info = published_version(store, persona, version)
        except PersonaError as exc:
            raise AdapterUnavailable(str(exc)) from None
        try:
            spec = PersonaSpec.model_validate_json((folder / PERSONA_FILE).read_bytes())
            adapter_config = json.loads((folder / ADAPTER_DIR / ADAPTER_CONFIG).read_bytes())
        except (OSError, ValueError, ValidationError) as exc:
            raise AdapterUnavailable(f"{folder} is incomplete or corrupt: {_first_line(exc)}") from None
        if adapter_config.get("peft_type") != "LORA":
            raise AdapterUnavailable(f"{folder / ADAPTER_DIR} is not a LoRA adapter")
        if spec.template.style == "chat" and self.chat is None:
            raise AdapterUnavailable(f"{folder}: its prompt template is the chat template, base {self.base_name} has none")
        if info.base != self.base_name:
            logger.warning("%s was trained on %s; this worker serves base %s", folder, info.base, self.base_name)
        try:
            facts = knowledge.load(folder)
        except PersonaError as exc:
            raise AdapterUnavailable(str(exc)) from None
        entry = PersonaVersion(persona, version, spec.model_copy(update={"name": persona}), folder, facts)
        self._load_adapter(folder / ADAPTER_DIR, entry.adapter_name)
        return entry

    def _load_adapter(self, path: Path, name: str) -> None:
        try:
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name).eval()
            else:
                self.model.load_adapter(str(path), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - shapes, target modules, truncated weights: this adapter only
            if self.model is not None and name in self.model.peft_config:
                self.model.delete_adapter(name)
            raise AdapterUnavailable(f"adapter {path} does not fit base {self.base_name}: {_first_line(exc)}") from None

    def unload(self, entry: PersonaVersion) -> None:
        """Free an evicted adapter's weights."""
        if self.model is not None and entry.adapter_name in self.model.peft_config:
            self.model.delete_adapter(entry.adapter_name)

    def generate(self, prompts: list[str], adapters: list[str], options: dict[str, Any]) -> tuple[list[str], list[int]]:
        """One padded `generate` whose row i runs adapter `adapters[i]`; (texts, token counts)."""
        if self.model is None:
            raise RuntimeError("no adapter loaded")
        ids = self.family.encode_prompts(self.tokenizer, prompts, self.max_input_tokens)
        encoded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)  # causal: on the left
        with torch.inference_mode():
            output = self.model.generate(**encoded, **options, adapter_names=adapters,
                                         pad_token_id=self.tokenizer.pad_token_id)
        sequences = self.family.reply_tokens(output, encoded["input_ids"].shape[1])
        counts = (sequences != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        texts = decode_replies(self.tokenizer, sequences)
        return texts, counts


def _first_line(exc: BaseException) -> str:
    """The error in one line: its first two lines (torch puts the mismatching tensor in the second)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
    return f"{exc.__class__.__name__}: {' '.join(lines)[:400]}".rstrip(": ")
