"""The slot layer: one wrapper per linear layer of the base, holding every resident adapter's
LoRA pair in preallocated slots (vLLM's `...WithLoRA` layers, small).

    a: [slots, width, in]   lora_A of the adapter in each slot, rows past its rank zero
    b: [slots, out, width]  lora_B * alpha / r (the scale folded in), columns past its rank zero

in the base's dtype on its device. A layer no resident adapter targets has no tables and costs
one attribute check; the tables appear when the first adapter targeting it is written and widen
(never past `maxLoraRank`) when a wider one arrives. Writing a slot is a copy, never a change of
the module graph. Per forward, the shared `RowSlots` plan says which rows use which slot:

- no row has an adapter (or none that targets this layer): the base layer's output, untouched;
- one adapter for every row that has one: two plain matmuls at that adapter's own rank;
- a mix with as many rows for every adapter (e.g. one row each, or beams): one batched matmul
  per factor over views of the rows and of the slots, nothing copied;
- any other mix: one grouped GEMM per factor over the rows in slot order (torch's `_grouped_mm`,
  the segmented kernel S-LoRA and Punica use), or, where it does not run, one gather of each
  row's A and B and a batched matmul (the reference).

Rows without an adapter are skipped; the product runs at the widest rank present, not the
table's width. Linear and transformers' GPT-2 `Conv1D` compute the same `x @ W + bias` with
transposed storage, so one wrapper serves both.
"""

from __future__ import annotations

import torch
from torch import nn

from persona_serving.row_slots import Plan, RowSlots
from personafleet.lora import servable_layer_types

ALIGN_BYTES = 16  # torch's grouped GEMM wants 16-byte strides


class SlotLoRA(nn.Module):
    def __init__(self, base_layer: nn.Module, rows: RowSlots, slots: int, max_rank: int):
        super().__init__()
        self.base_layer = base_layer
        self.rows, self.slots, self.max_rank = rows, slots, max_rank
        if isinstance(base_layer, nn.Linear):
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        else:  # Conv1D keeps its weight as [in, out]
            self.in_features, self.out_features = base_layer.weight.shape
        weight = base_layer.weight
        self.device, self.dtype = weight.device, weight.dtype
        # Ranks are rounded up to 16 bytes on 16-bit dtypes so that the grouped GEMM's strides align.
        self.rank_align = max(1, ALIGN_BYTES // weight.element_size()) if weight.element_size() < 4 else 1
        self.grouped = rows.grouped and all(
            (n * weight.element_size()) % ALIGN_BYTES == 0 for n in (self.in_features, self.out_features))
        self.a: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self.ranks = [0] * slots  # rank of the adapter in each physical slot here (0: none)
        self._rank_plan: tuple[Plan | None, int] = (None, 0)

    # The base's code reads its layers' parameters (T5 casts to `wo.weight.dtype`), as PEFT's layers allow.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def width(self) -> int:
        return 0 if self.a is None else self.a.shape[1]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, slots={self.slots}, width={self.width}"

    # --- slots (check and reserve every layer first, then write: a misfit changes nothing) -----
    def check(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """A ValueError when (A [r, in], B [out, r]) is no pair for this layer or wider than the slots."""
        rank = a.shape[0]
        if a.shape != (rank, self.in_features) or b.shape != (self.out_features, rank):
            raise ValueError(f"lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit a "
                             f"{self.in_features}->{self.out_features} layer")
        if rank > self.max_rank:
            raise ValueError(f"rank {rank} is above maxLoraRank {self.max_rank}")

    def reserve(self, rank: int) -> None:
        """Tables at least `rank` wide (allocated on the first adapter that targets this layer)."""
        self._widen(rank)

    def write(self, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Copy one adapter's checked pair (A, scaled B) into physical slot `index`."""
        rank = a.shape[0]
        old = self.ranks[index]
        self.a[index, :rank].copy_(a, non_blocking=True)
        self.b[index, :, :rank].copy_(b, non_blocking=True)
        if old > rank:  # what the slot's previous adapter left beyond this rank
            self.a[index, rank:old].zero_()
            self.b[index, :, rank:old].zero_()
        self.ranks[index] = rank

    def clear(self, index: int) -> None:
        """Zero physical slot `index` (its new adapter does not target this layer)."""
        if self.ranks[index]:
            self.a[index].zero_()
            self.b[index].zero_()
            self.ranks[index] = 0

    def _widen(self, rank: int) -> None:
        """Allocate the tables, or widen them to `rank` (rounded up to the alignment); a running
        forward keeps the tables it read, which hold every slot it uses."""
        if rank <= self.width:
            return
        width = -(-rank // self.rank_align) * self.rank_align
        a = torch.zeros(self.slots, width, self.in_features, device=self.device, dtype=self.dtype)
        b = torch.zeros(self.slots, self.out_features, width, device=self.device, dtype=self.dtype)
        if self.a is not None:
            a[:, :self.width].copy_(self.a)
            b[:, :, :self.width].copy_(self.b)
        self.a, self.b = a, b

    @property
    def nbytes(self) -> int:
        return 0 if self.a is None else self.a.nbytes + self.b.nbytes

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.a is None:
            return out
        rows = x.shape[0]
        plan = self.rows.plan(rows, x.numel() // (rows * self.in_features))
        if plan is None:
            return out
        rank = self._rank(plan)
        if rank:
            self._add_delta(x.reshape(rows, -1), out.view(rows, -1), plan, rank)
        return out

    def _rank(self, plan: Plan) -> int:
        """The widest rank among the plan's slots in this layer (0: none targets it), aligned."""
        cached_plan, rank = self._rank_plan
        if cached_plan is not plan:
            rank = max(self.ranks[p] for p in plan.slots)
            rank = min(-(-rank // self.rank_align) * self.rank_align, self.width)
            self._rank_plan = (plan, rank)
        return rank

    def _add_delta(self, x: torch.Tensor, out: torch.Tensor, plan: Plan, rank: int) -> None:
        """out[taken rows] += x[taken rows] @ A.T @ B.T, each row with its slot's pair.
        `x` and `out` are [rows, tokens * features] views."""
        rows_in_order = plan.order is None
        taken = x[plan.start:] if rows_in_order else x.index_select(0, plan.order)
        tokens = taken.reshape(-1, self.in_features)
        if len(plan.slots) == 1:
            slot = plan.slots[0]
            hidden = tokens @ self.a[slot, :rank].T
            if rows_in_order:  # accumulate straight into the output rows
                out[plan.start:].view(-1, self.out_features).addmm_(hidden, self.b[slot, :, :rank].T)
                return
            delta = hidden @ self.b[slot, :, :rank].T
        elif plan.equal:  # n rows per slot: one batched matmul over views of the rows and the slots
            a, b = self._groups(plan, rank)
            hidden = torch.bmm(tokens.view(a.shape[0], -1, self.in_features), a.transpose(1, 2))
            if rows_in_order:
                out[plan.start:].view(a.shape[0], -1, self.out_features).baddbmm_(hidden, b.transpose(1, 2))
                return
            delta = torch.bmm(hidden, b.transpose(1, 2))
        elif self.grouped:
            a, b = self._groups(plan, rank)
            hidden = torch._grouped_mm(tokens, a.transpose(1, 2), offs=plan.offs)
            delta = torch._grouped_mm(hidden, b.transpose(1, 2), offs=plan.offs)
        else:
            a = self.a[:, :rank].index_select(0, plan.row_slots)
            b = self.b[:, :, :rank].index_select(0, plan.row_slots)
            per_row = tokens.view(len(plan.row_slots), -1, self.in_features)
            delta = torch.bmm(torch.bmm(per_row, a.transpose(1, 2)), b.transpose(1, 2))
        if rows_in_order:
            out[plan.start:].add_(delta.view(len(plan.row_slots), -1))
        else:
            out.index_add_(0, plan.order, delta.view(len(plan.row_slots), -1))

    def _groups(self, plan: Plan, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The A and B tables of the plan's groups: a view of the slot range, or a gather of the
        present slots when the range is sparse."""
        if plan.groups is None:
            lo, hi = plan.slots[0], plan.slots[-1] + 1
            return self.a[lo:hi, :rank], self.b[lo:hi, :, :rank]
        return self.a[:, :rank].index_select(0, plan.groups), self.b[:, :, :rank].index_select(0, plan.groups)


def wrap_layers(model: nn.Module, rows: RowSlots, slots: int, max_rank: int) -> dict[str, SlotLoRA]:
    """Replace every linear layer of `model` (Linear, GPT-2 Conv1D) by a SlotLoRA around it, once,
    at load time; returns them by module path (the names PEFT's adapter files use)."""
    types = servable_layer_types()
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, types) and name]
    wrapped = {}
    for name, module in targets:
        parent, _, attribute = name.rpartition(".")
        layer = SlotLoRA(module, rows, slots, max_rank)
        setattr(model.get_submodule(parent) if parent else model, attribute, layer)
        wrapped[name] = layer
    return wrapped
