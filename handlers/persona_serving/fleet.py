"""One base model and the LoRA adapters of many persona versions on it: the fleet worker's model,
without TorchServe.

The base is loaded once (bf16 on CUDA, fp32 on CPU) through its family's auto class
(`personafleet.family`: seq2seq or causal, which also decides how prompts are encoded and how
`generate` output is cut to the reply), and every linear layer is wrapped ONCE in a slot layer
(`torch.nn.Linear`, GPT-2's `Conv1D`); there is no PEFT at inference. Loading a published version (`STORE/<persona>/v<N>/`,
contract 1) reads its safetensors (or takes them from the host tier) and copies them into a free
slot; unloading frees the slot for the next one. Every forward pass's rows each use their
version's slot (`set_row_slots`: one index shared by all layers, set once per pass). The worker
decodes through the step runner (persona_serving.runner, fed by `encode`), which sets the live
rows' slots before each step; `generate`, one padded whole-reply call, is what the runner is
checked against and the benchmark's baseline.
Three ideas in three places, as in vLLM: weights in slots (`lora_layers`), one index per step
(`row_slots`), a manager (`adapter_slots`: the slot table; the handler's LRU decides evictions).

Anything wrong with a version folder - missing, half-published, corrupt, or an adapter slots
cannot serve (`personafleet.lora`: DoRA, biases, embeddings, rank above `max_lora_rank`, target
modules the base lacks) - is an `AdapterUnavailable` for the requests that asked for it; the
resident adapters are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import AutoTokenizer

from persona_serving.adapter_slots import AdapterSlots, SlotLoadObserver
from persona_serving.decoding import decode_replies
from persona_serving.requests import PersonaVersion
from personafleet import knowledge
from personafleet.errors import PersonaError
from personafleet.family import load_base, load_family
from personafleet.lora import MAX_LORA_RANK
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.routing import version_dir
from personafleet.store import ADAPTER_DIR, published_version

logger = logging.getLogger(__name__)


class AdapterUnavailable(Exception):
    """A version that cannot be served from this worker (the reason is for the client and the log)."""


def pick_device(gpu_id: int | None) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 (fp16 where bf16 is missing) when TorchServe gave us a GPU, else CPU fp32."""
    if gpu_id is not None and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device(f"cuda:{gpu_id}"), dtype
    return torch.device("cpu"), torch.float32


class FleetModel:
    """`max_resident_adapters` slots plus one spare (the LRU loads a new adapter before it evicts
    the oldest); `max_host_adapters` adapters kept in (pinned, on CUDA) host memory, 0 = no host tier."""

    def __init__(self, base: str, device: torch.device, dtype: torch.dtype, max_input_tokens: int = 512, *,
                 max_resident_adapters: int = 32, max_lora_rank: int = MAX_LORA_RANK, max_host_adapters: int = 0,
                 on_slot_load: SlotLoadObserver | None = None):
        self.base_name, self.device, self.max_input_tokens = base, device, max_input_tokens
        self.family = load_family(base)
        self.tokenizer = self.family.prepare_tokenizer(AutoTokenizer.from_pretrained(base), base)
        self.chat = self.family.chat_formatter(self.tokenizer)  # for personas whose template is the chat one
        self.model = load_base(self.family, base, dtype=dtype).to(device).eval()
        self.slots = AdapterSlots(self.model, capacity=max_resident_adapters, max_rank=max_lora_rank,
                                  host_capacity=max_host_adapters, on_load=on_slot_load)

    def slot(self, entry: PersonaVersion | None) -> int:
        """The slot of a resident version (0 = no adapter, for None)."""
        if entry is None:
            return 0
        try:
            return self.slots.slot(entry.key)
        except KeyError:
            raise KeyError(f"{entry.persona} v{entry.version} is not resident") from None

    def set_row_slots(self, slots: Sequence[int] | torch.Tensor) -> None:
        """One slot per batch row for the next forward passes of `model` (they follow the rows
        through `generate`'s beams and return sequences)."""
        self.slots.set_rows(slots)

    @property
    def slots_in_use(self) -> int:
        return len(self.slots)

    def load(self, store: Path, persona: str, version: int) -> PersonaVersion:
        """Read a published version and put its adapter into a free slot; AdapterUnavailable says why not."""
        folder = version_dir(store, persona, version)
        try:
            info = published_version(store, persona, version)
        except PersonaError as exc:
            raise AdapterUnavailable(str(exc)) from None
        try:
            spec = PersonaSpec.model_validate_json((folder / PERSONA_FILE).read_bytes())
            facts = knowledge.load(folder)
        except (OSError, ValueError, ValidationError, PersonaError) as exc:
            raise AdapterUnavailable(f"{folder} is incomplete or corrupt: {_first_line(exc)}") from None
        if spec.template.style == "chat" and self.chat is None:
            raise AdapterUnavailable(f"{folder}: its prompt template is the chat template, base {self.base_name} has none")
        if info.base != self.base_name:
            logger.warning("%s was trained on %s; this worker serves base %s", folder, info.base, self.base_name)
        entry = PersonaVersion(persona, version, spec.model_copy(update={"name": persona}), folder, facts)
        try:
            self.slots.fill(entry.key, folder / ADAPTER_DIR)
        except PersonaError as exc:
            raise AdapterUnavailable(f"{persona} v{version} cannot be served on base {self.base_name}: {exc}") from None
        return entry

    def unload(self, entry: PersonaVersion) -> None:
        """Free an evicted version's slot (its weights stay until the next adapter overwrites them)."""
        self.slots.free(entry.key)

    # --- generation ---------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """A prompt's token ids as its family feeds them (cut at the start to `max_input_tokens`)."""
        return self.family.encode_prompts(self.tokenizer, [prompt], self.max_input_tokens)[0]

    def generate(self, prompts: list[str], entries: Sequence[PersonaVersion | None],
                 options: dict[str, Any]) -> tuple[list[str], list[int]]:
        """One padded `generate` whose row i uses `entries[i]`'s slot; (texts, token counts), one
        per returned sequence: the whole-reply reference (the worker serves through the step runner).
        Rows given in slot order reach the layers as contiguous groups; any other order costs one row
        gather per layer."""
        ids = self.family.encode_prompts(self.tokenizer, prompts, self.max_input_tokens)
        encoded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)  # causal: on the left
        self.set_row_slots([self.slot(entry) for entry in entries])
        with torch.inference_mode():
            output = self.model.generate(**encoded, **options, pad_token_id=self.tokenizer.pad_token_id)
        sequences = self.family.reply_tokens(output, encoded["input_ids"].shape[1])
        counts = (sequences != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        return decode_replies(self.tokenizer, sequences), counts


def _first_line(exc: BaseException) -> str:
    """The error in one line: its first two lines (torch puts the mismatching tensor in the second)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
    return f"{exc.__class__.__name__}: {' '.join(lines)[:400]}".rstrip(": ")
