"""One base model and the LoRA adapters of many persona versions on it: the fleet worker's model,
without TorchServe.

The base is loaded once (bf16 on CUDA, fp32 on CPU) and every linear layer is wrapped ONCE in a
slot layer (`lora_layers`); there is no PEFT at inference. Loading a published version
(`STORE/<persona>/v<N>/`, contract 1) reads its safetensors (or takes them from the host tier)
and copies them into a free slot; unloading frees the slot for the next one. A batch is one
padded `generate` whose rows each use their version's slot (`set_row_slots`: one index shared
by all layers, set once per batch). The three ideas in three places, as in vLLM: weights in
slots (`lora_layers`), one index per step (`row_slots`), a manager (the handler's LRU over
`load`/`unload`, `residency.AdapterLRU`).

Anything wrong with a version folder - missing, half-published, corrupt, or an adapter slots
cannot serve (`personafleet.lora`: DoRA, biases, embeddings, rank above `max_lora_rank`, target
modules the base lacks) - is an `AdapterUnavailable` for the requests that asked for it; the
resident adapters are untouched.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from persona_serving.adapter_weights import AdapterWeights, read_adapter
from persona_serving.decoding import decode_replies
from persona_serving.lora_layers import SlotLoRA, wrap_layers
from persona_serving.requests import PersonaVersion
from persona_serving.residency import AdapterLRU
from persona_serving.row_slots import RowSlots, grouped_mm_works
from personafleet import knowledge
from personafleet.errors import PersonaError
from personafleet.lora import MAX_LORA_RANK, check_targets
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.routing import version_dir
from personafleet.store import ADAPTER_DIR, read_version_info

logger = logging.getLogger(__name__)

DISK, HOST = "disk", "host"  # where a slot load came from (the metric's `tier`)
SlotLoadObserver = Callable[[str, float], None]


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
        self.base_name, self.device, self.dtype, self.max_input_tokens = base, device, dtype, max_input_tokens
        self.max_lora_rank, self.on_slot_load = max_lora_rank, on_slot_load
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        # Prompts end with the newest turn and the answer marker: cut overlong ones at the start.
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSeq2SeqLM.from_pretrained(base, dtype=dtype).to(device).eval()
        self.rows = RowSlots(device, grouped=grouped_mm_works(device, dtype))
        self.layers: dict[str, SlotLoRA] = wrap_layers(self.model, self.rows, max_resident_adapters + 1, max_lora_rank)
        self._resident: dict[tuple[str, int], int] = {}
        self._free = list(range(1, max_resident_adapters + 2))  # a heap: the lowest free slot first
        self.host: AdapterLRU[Path, AdapterWeights] | None = (
            AdapterLRU(max_host_adapters, self._read, lambda folder, weights: None) if max_host_adapters else None)

    # --- slots --------------------------------------------------------------------------------
    def slot(self, entry: PersonaVersion | None) -> int:
        """The slot of a resident version (0 = no adapter, for None)."""
        if entry is None:
            return 0
        try:
            return self._resident[entry.key]
        except KeyError:
            raise KeyError(f"{entry.persona} v{entry.version} is not resident") from None

    def set_row_slots(self, slots: Sequence[int] | torch.Tensor) -> None:
        """One slot per batch row for the next forward passes of `model` (they follow the rows
        through `generate`'s beams and return sequences)."""
        self.rows.set(slots)

    @property
    def slots_in_use(self) -> int:
        return len(self._resident)

    def load(self, store: Path, persona: str, version: int) -> PersonaVersion:
        """Read a published version and put its adapter into a free slot; AdapterUnavailable says why not."""
        folder = version_dir(store, persona, version)
        try:
            info = read_version_info(folder)
        except PersonaError as exc:
            raise AdapterUnavailable(str(exc)) from None
        if (info.persona, info.version) != (persona, version):
            raise AdapterUnavailable(f"{folder} holds {info.persona} v{info.version}, not {persona} v{version}")
        try:
            spec = PersonaSpec.model_validate_json((folder / PERSONA_FILE).read_bytes())
            facts = knowledge.load(folder)
        except (OSError, ValueError, ValidationError, PersonaError) as exc:
            raise AdapterUnavailable(f"{folder} is incomplete or corrupt: {_first_line(exc)}") from None
        if info.base != self.base_name:
            logger.warning("%s was trained on %s; this worker serves base %s", folder, info.base, self.base_name)
        entry = PersonaVersion(persona, version, spec.model_copy(update={"name": persona}), folder, facts)
        if entry.key not in self._resident:
            self._fill_slot(entry.key, folder / ADAPTER_DIR)
        return entry

    def unload(self, entry: PersonaVersion) -> None:
        """Free an evicted version's slot (its weights stay until the next adapter overwrites them)."""
        if (slot := self._resident.pop(entry.key, None)) is not None:
            heapq.heappush(self._free, slot)

    def _fill_slot(self, key: tuple[str, int], adapter: Path) -> None:
        if not self._free:
            raise AdapterUnavailable(f"no free slot for {key[0]} v{key[1]}: {len(self._resident)} resident")
        started = time.perf_counter()
        tier = HOST if self.host is not None and adapter in self.host else DISK
        try:
            weights = self.host.get(adapter)[0] if self.host is not None else self._read(adapter)
            check_targets(self.model, set(weights.layers) - set(self.layers))  # what no slot layer wraps
        except PersonaError as exc:
            raise AdapterUnavailable(f"adapter {adapter} cannot be served on base {self.base_name}: {exc}") from None
        slot = heapq.heappop(self._free)
        try:
            self._write(slot - 1, weights)
        except ValueError as exc:  # a pair whose shape does not fit its layer: nothing was written
            heapq.heappush(self._free, slot)
            raise AdapterUnavailable(f"adapter {adapter} does not fit base {self.base_name}: {exc}") from None
        self._resident[key] = slot
        if self.on_slot_load is not None:
            self.on_slot_load(tier, time.perf_counter() - started)

    def _read(self, adapter: Path) -> AdapterWeights:
        return read_adapter(adapter, self.dtype, self.max_lora_rank, pin=self.device.type == "cuda")

    def _write(self, index: int, weights: AdapterWeights) -> None:
        """Copy an adapter into physical slot `index` of every layer (zeros where it targets none)."""
        for name, (a, b) in weights.layers.items():  # shape checks and table growth first, on the
            self.layers[name].check(a, b)            # main stream: a misfit leaves the slot as it was
            self.layers[name].reserve(a.shape[0])
        with _copy_stream(self.device):
            for name, layer in self.layers.items():
                if name in weights.layers:
                    layer.write(index, *weights.layers[name])
                else:
                    layer.clear(index)

    @property
    def slot_bytes(self) -> int:
        """Bytes of every slot table (what the resident adapters cost on the device)."""
        return sum(layer.nbytes for layer in self.layers.values())

    # --- generation ---------------------------------------------------------------------------
    def generate(self, prompts: list[str], entries: Sequence[PersonaVersion | None],
                 options: dict[str, Any]) -> tuple[list[str], list[int]]:
        """One padded `generate` whose row i uses `entries[i]`'s slot; (texts, token counts), one
        per returned sequence. Rows given in slot order (the handler sorts them) reach the layers
        as contiguous groups; any other order costs one row gather per layer."""
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_input_tokens
        ).to(self.device)
        self.set_row_slots([self.slot(entry) for entry in entries])
        with torch.inference_mode():
            output = self.model.generate(**encoded, **options, pad_token_id=self.tokenizer.pad_token_id)
        sequences = output[:, 1:]  # drop the decoder start token
        counts = (sequences != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        return decode_replies(self.tokenizer, sequences), counts


@contextlib.contextmanager
def _copy_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, slot copies run on a side stream, so a running batch's kernels are not queued
    behind them, and are complete (host buffers free to reuse) when the block ends."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # tables allocated and zeroed on the main stream
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


def _first_line(exc: BaseException) -> str:
    """The error in one line: its first two lines (torch puts the mismatching tensor in the second)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
    return f"{exc.__class__.__name__}: {' '.join(lines)[:400]}".rstrip(": ")
