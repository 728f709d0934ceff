"""The slot table of one model: which adapter sits in which slot (vLLM's adapter manager, small).

Wraps every linear layer of the model once (`lora_layers.wrap_layers`) and owns the one row-slot
index they share (`row_slots.RowSlots`). `fill(key, adapter)` reads an adapter - from the host
tier when it holds it, else from disk - and copies it into the lowest free slot of every layer;
`free(key)` returns the slot for reuse (the weights stay until overwritten). There are
`capacity + 1` slots: the worker's LRU loads a new adapter into the spare one BEFORE it evicts
the oldest, so a failed load evicts nothing and a load never writes a slot the running batch
reads. Which adapters stay is the LRU's decision (`residency.AdapterLRU`), not this table's.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from persona_serving.adapter_weights import AdapterWeights, read_adapter
from persona_serving.lora_layers import SlotLoRA, wrap_layers
from persona_serving.residency import AdapterLRU
from persona_serving.row_slots import RowSlots, grouped_mm_works
from personafleet.errors import PersonaError
from personafleet.lora import check_targets

DISK, HOST = "disk", "host"  # where a slot load came from (the metric's `tier`)
SlotLoadObserver = Callable[[str, float], None]


class AdapterSlots:
    def __init__(self, model: nn.Module, *, capacity: int, max_rank: int, host_capacity: int = 0,
                 on_load: SlotLoadObserver | None = None):
        weight = next(model.parameters())
        self.device, self.dtype, self.max_rank, self.on_load = weight.device, weight.dtype, max_rank, on_load
        self.model = model
        self.rows = RowSlots(self.device, grouped=grouped_mm_works(self.device, self.dtype))
        self.layers: dict[str, SlotLoRA] = wrap_layers(model, self.rows, capacity + 1, max_rank)
        self._taken: dict[Hashable, int] = {}
        self._free = list(range(1, capacity + 2))  # a heap: the lowest free slot first keeps the used range dense
        # Host copies, pinned on CUDA so that a copy into a slot is asynchronous; keyed by adapter folder.
        self.host: AdapterLRU[Path, AdapterWeights] | None = (
            AdapterLRU(host_capacity, self._read, lambda folder, weights: None) if host_capacity else None)

    def __contains__(self, key: object) -> bool:
        return key in self._taken

    def __len__(self) -> int:
        return len(self._taken)

    def slot(self, key: Hashable) -> int:
        """The slot of a filled key (KeyError when it holds none)."""
        try:
            return self._taken[key]
        except KeyError:
            raise KeyError(f"{key} is not in a slot") from None

    def set_rows(self, slots: Sequence[int] | torch.Tensor) -> None:
        """One slot per batch row (0 = no adapter) for the next forward passes."""
        self.rows.set(slots)

    def fill(self, key: Hashable, adapter: Path) -> int:
        """Put the adapter in folder `adapter` into a free slot under `key`; its slot. A PersonaError
        says why it cannot be served (unreadable, unservable, not fitting this model's layers)."""
        if key in self._taken:
            return self._taken[key]
        if not self._free:
            raise PersonaError(f"no free slot: {len(self._taken)} adapters hold them all")
        started = time.perf_counter()
        tier = HOST if self.host is not None and adapter in self.host else DISK
        weights = self.host.get(adapter)[0] if self.host is not None else self._read(adapter)
        check_targets(self.model, set(weights.layers) - set(self.layers))  # what no slot layer wraps
        slot = heapq.heappop(self._free)
        try:
            self._write(slot - 1, weights)
        except ValueError as exc:  # a pair whose shape does not fit its layer: nothing was written
            heapq.heappush(self._free, slot)
            raise PersonaError(str(exc)) from None
        self._taken[key] = slot
        if self.on_load is not None:
            self.on_load(tier, time.perf_counter() - started)
        return slot

    def free(self, key: Hashable) -> None:
        """Return a key's slot for reuse."""
        if (slot := self._taken.pop(key, None)) is not None:
            heapq.heappush(self._free, slot)

    @property
    def nbytes(self) -> int:
        """Bytes of every slot table (what the slots cost on the device)."""
        return sum(layer.nbytes for layer in self.layers.values())

    def _read(self, adapter: Path) -> AdapterWeights:
        """Pinned when the host tier keeps it on CUDA (pinning a one-off copy would cost more than it saves)."""
        return read_adapter(adapter, self.dtype, self.max_rank, pin=self.host is not None and self.device.type == "cuda")

    def _write(self, index: int, weights: AdapterWeights) -> None:
        """Copy an adapter into physical slot `index` of every layer (zeros where it targets none)."""
        for name, (a, b) in weights.layers.items():  # checks and table growth first, on the main
            self.layers[name].check(a, b)            # stream: a misfit leaves every slot as it was
            self.layers[name].reserve(a.shape[0])
        with _copy_stream(self.device):
            for name, layer in self.layers.items():
                if name in weights.layers:
                    layer.write(index, *weights.layers[name])
                else:
                    layer.clear(index)


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
