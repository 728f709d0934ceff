"""The slot of every batch row, ONE object shared by all slot layers of a model (vLLM's punica
wrapper, small).

`set(slots)` once per batch: one slot per row, 0 = no adapter (the bare base). Each slot layer's
forward asks `plan(rows, tokens)` how its rows meet the slots. A plan is built once per shape
(rows, tokens per row) and cached until the next `set`, so the ~100 layers of a forward and every
decoding step of a `generate` share it: the per-layer cost is a dictionary lookup.

Rows follow `generate`: beam search and `num_return_sequences` repeat each input row in place
(`repeat_interleave`; beams are reordered only within their own input row), so a forward over
n x rows gives input row i's slot to rows i*n .. i*n+n-1 - the encoder sees the batch, the
decoder its expansion, and the slots stay right for both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# A range of slots with at most this many times more slots than the batch uses is read in place
# (a view, empty groups cost a few microseconds each); a sparser one is gathered first.
RANGE_SLACK = 2


@dataclass(frozen=True, eq=False)
class Plan:
    """How the rows of one forward meet the slots; slot s lives at physical index s - 1.

    Rows with an adapter are taken in slot order: `x[start:]` when the batch already is in slot
    order (`order` None; the rows before `start` have no adapter and are skipped), else
    `x.index_select(0, order)`."""

    start: int
    order: torch.Tensor | None
    slots: tuple[int, ...]  # physical slots present, ascending
    row_slots: torch.Tensor  # physical slot of each taken row (the gather kernel)
    groups: torch.Tensor | None  # physical slots the grouped product runs over; None: the range slots[0]..slots[-1]
    offs: torch.Tensor  # int32 end (in tokens) of each group's rows
    equal: bool  # every group has the same number of rows (none empty): a batched matmul over views


class RowSlots:
    def __init__(self, device: torch.device, grouped: bool):
        self.device = device
        self.grouped = grouped  # torch's grouped GEMM works here (`grouped_mm_works`); else gather + bmm
        self._slots: list[int] = []
        self._plans: dict[tuple[int, int], Plan | None] = {}

    @property
    def slots(self) -> list[int]:
        return list(self._slots)

    def set(self, slots: Sequence[int] | torch.Tensor) -> None:
        """The slot of each row for the next forward passes (0 = no adapter)."""
        values = slots.tolist() if isinstance(slots, torch.Tensor) else [int(s) for s in slots]
        if any(s < 0 for s in values):
            raise ValueError(f"slots are >= 0, got {values}")
        self._slots, self._plans = values, {}

    def plan(self, rows: int, tokens: int) -> Plan | None:
        """The plan for a forward over `rows` rows of `tokens` tokens; None when no row has an adapter."""
        key = (rows, tokens)
        if key not in self._plans:
            self._plans[key] = self._build(rows, tokens)
        return self._plans[key]

    def _expanded(self, rows: int) -> list[int]:
        batch = len(self._slots)
        if batch == 0 or rows % batch:
            raise RuntimeError(f"a forward over {rows} rows, but the row slots name {batch} rows (set_row_slots)")
        repeat = rows // batch
        return [slot for slot in self._slots for _ in range(repeat)]

    def _build(self, rows: int, tokens: int) -> Plan | None:
        per_row = self._expanded(rows)
        taken = sorted((i for i in range(rows) if per_row[i]), key=per_row.__getitem__)  # stable: slot order
        if not taken:
            return None
        in_order = taken == list(range(rows - len(taken), rows))
        physical = [per_row[i] - 1 for i in taken]
        counts = Counter(physical)
        present = sorted(counts)
        span = present[-1] - present[0] + 1
        if span <= RANGE_SLACK * len(present):  # read the range in place; absent slots are empty groups
            groups, sizes = None, [counts[p] for p in range(present[0], present[-1] + 1)]
        else:
            groups, sizes = self._tensor(present), [counts[p] for p in present]
        ends = torch.tensor(sizes).cumsum(0) * tokens
        return Plan(
            start=rows - len(taken) if in_order else 0,
            order=None if in_order else self._tensor(taken), slots=tuple(present),
            row_slots=self._tensor(physical), groups=groups, offs=ends.to(torch.int32).to(self.device),
            equal=len(set(sizes)) == 1,
        )

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


def grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's grouped GEMM (`torch._grouped_mm`: CPU; CUDA bf16 on sm80+) runs here with
    the slot layout (strided views, empty groups) and agrees with the gather reference."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 16, 64, generator=generator).to(device, dtype)  # [slots, width, in]
    b = torch.randn(4, 32, 16, generator=generator).to(device, dtype)  # [slots, out, width]
    x = torch.randn(6, 64, generator=generator).to(device, dtype)
    offs = torch.tensor([2, 2, 6], dtype=torch.int32, device=device)  # the middle group is empty
    try:
        h = torch._grouped_mm(x, a[1:4, :8].transpose(1, 2), offs=offs)
        got = torch._grouped_mm(h, b[1:4, :, :8].transpose(1, 2), offs=offs)
    except (RuntimeError, NotImplementedError):
        return False
    rows = torch.tensor([1, 1, 3, 3, 3, 3], device=device)
    expected = torch.bmm(torch.bmm(x[:, None], a[rows, :8].transpose(1, 2)), b[rows, :, :8].transpose(1, 2))[:, 0]
    return bool(torch.allclose(got.float(), expected.float(), rtol=2e-2, atol=2e-2))
