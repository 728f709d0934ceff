"""The model runner of step-level scheduling: the live rows of one padded batch and their
key/value caches, advanced ONE token per step. It knows tensors, not requests (the scheduler,
`persona_serving.scheduler`, knows requests and no tensors).

- `admit(rows)`: the joining rows' first forward pass (for an encoder-decoder base: the encoder
  and the first decoder step, which fills their cross-attention cache once; for a causal base:
  the prompt) gives each its first token; their caches then join the live batch.
- `step()`: one decoder forward for every live row: the self-attention cache grows by one column,
  a cross-attention cache stays as admitted.
- `retire(ids)`: the rows leave the batch; their cache rows are dropped at once, and so are the
  columns no remaining row needs.

Rows joined at different steps sit in one batch with LEFT-padded self-attention caches (all rows
end at the same column, padding masked out). Each row brings its decoding options (greedy or
sampling, temperature, top-k/p, repetition penalty; transformers' own logits processors, so greedy
rows match `generate`) and its adapter: `select_adapters(adapters)` is called before every
forward pass and returns extra forward arguments (the fleet's slot layer: `FleetModel.set_row_slots`
with the rows' slots, and none). It is told adapters only, never the family.

Families: the cache layout is the family's business (`runner_family` picks one from the base's
`personafleet.family`); `step`, `retire`, the decoding options and the scheduler are shared.
- `EncoderDecoderFamily` (T5, FRED-T5): the prompt goes through the encoder once, into a
  cross-attention cache fixed per row and right-padded (masked); the self-attention cache holds
  the decoder start token and the reply. T5's relative position bias depends only on the distance
  between query and key, which padding on the left does not change.
- `CausalFamily` (GPT-2, ruGPT-3, Llama, Qwen...): the prompt goes into the self-attention cache
  at admission (no cross-attention cache), so a row's cache is prompt + reply, and rows of
  different prompt lengths are left-padded like any other row. Absolute (GPT-2) and rotary (Llama)
  positions are therefore given per row, counted over its real columns only (`generate`'s rule for
  left padding), so padding moves no token's position.
So a row decodes the same tokens as `generate` would for it alone, in either family.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import BaseModelOutput

from personafleet.family import ModelFamily

RowId = str
SelectAdapters = Callable[[Sequence[Hashable]], dict[str, Any]]


@dataclass(frozen=True)
class Decoding:
    """How one row picks its next token: the request's clamped generation options."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Decoding:
        """From `requests.prepare`'s options; `max_new_tokens` is the scheduler's, `num_beams`
        has no meaning for a row decoded one token at a time (see docs/serving.md)."""
        sample = bool(options.get("do_sample", False))
        return cls(
            do_sample=sample,
            temperature=float(options.get("temperature", 1.0)) if sample else 1.0,
            top_k=options.get("top_k") if sample else None,
            top_p=options.get("top_p") if sample else None,
            repetition_penalty=float(options.get("repetition_penalty", 1.0)),
        )

    def processors(self) -> LogitsProcessorList:
        """transformers' processors in `generate`'s order: penalties, then the sampling warpers."""
        steps = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            steps.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                steps.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                steps.append(TopKLogitsWarper(self.top_k))
            if self.top_p is not None and self.top_p < 1.0:
                steps.append(TopPLogitsWarper(self.top_p))
        return steps


@dataclass(frozen=True)
class Row:
    """A row asking to join: its prompt's token ids, its decoding options and its adapter."""

    id: RowId
    input_ids: list[int]
    decoding: Decoding
    adapter: Hashable = 0


class Family(Protocol):
    """What differs between model families: the first pass of joining rows and one decoder step."""

    def prefill(self, model: Any, rows: Sequence[Row], extra: dict[str, Any]) -> tuple[torch.Tensor, Batch]: ...

    def step(self, model: Any, batch: Batch, extra: dict[str, Any]) -> torch.Tensor: ...


@dataclass
class Batch:
    """The live rows' tensors. `self_mask` (rows x self columns) marks real self-attention cache
    columns (left padding is False); `source_mask` (rows x source columns) the encoder's (None for
    a causal base, which has no cross-attention cache)."""

    ids: list[RowId]
    cache: Cache
    self_mask: torch.Tensor
    source_mask: torch.Tensor | None
    last: torch.Tensor  # each row's newest token, the next step's input
    history: list[list[int]]  # what `generate` would hold as input_ids (what the repetition penalty looks at)
    decoding: list[Decoding]
    adapters: list[Hashable]

    def _layers(self) -> tuple[list[Any], list[Any]]:
        """(self-attention cache layers, cross-attention cache layers)."""
        if isinstance(self.cache, EncoderDecoderCache):
            return self.cache.self_attention_cache.layers, self.cache.cross_attention_cache.layers
        return self.cache.layers, []

    def extend(self, other: Batch) -> None:
        """Append `other`'s rows: self caches aligned on the right, source caches on the left."""
        mine, theirs = self._layers(), other._layers()
        width = max(self.self_mask.shape[1], other.self_mask.shape[1])
        for a, b in zip(mine[0], theirs[0], strict=True):
            a.keys = torch.cat([_pad(a.keys, width, left=True), _pad(b.keys, width, left=True)])
            a.values = torch.cat([_pad(a.values, width, left=True), _pad(b.values, width, left=True)])
        self.self_mask = torch.cat([_pad(self.self_mask, width, left=True), _pad(other.self_mask, width, left=True)])
        if self.source_mask is not None and other.source_mask is not None:
            length = max(self.source_mask.shape[1], other.source_mask.shape[1])
            for a, b in zip(mine[1], theirs[1], strict=True):
                a.keys = torch.cat([_pad(a.keys, length, left=False), _pad(b.keys, length, left=False)])
                a.values = torch.cat([_pad(a.values, length, left=False), _pad(b.values, length, left=False)])
            self.source_mask = torch.cat([_pad(self.source_mask, length, left=False),
                                          _pad(other.source_mask, length, left=False)])
        self.ids += other.ids
        self.last = torch.cat([self.last, other.last])
        self.history += other.history
        self.decoding += other.decoding
        self.adapters += other.adapters

    def keep(self, indices: list[int]) -> None:
        """Only these rows stay; the memory of the others and of all-padding columns is freed."""
        index = torch.tensor(indices, dtype=torch.long, device=self.last.device)
        self.cache.batch_select_indices(index)
        self.self_mask, self.last = self.self_mask[index], self.last[index]
        if self.source_mask is not None:
            self.source_mask = self.source_mask[index]
        self.ids = [self.ids[i] for i in indices]
        self.history = [self.history[i] for i in indices]
        self.decoding = [self.decoding[i] for i in indices]
        self.adapters = [self.adapters[i] for i in indices]
        self_layers, source_layers = self._layers()
        first = int(self.self_mask.any(dim=0).int().argmax())  # the oldest remaining row's first column
        if first:
            for layer in self_layers:
                layer.keys, layer.values = layer.keys[..., first:, :].contiguous(), layer.values[..., first:, :].contiguous()
            self.self_mask = self.self_mask[:, first:]
        if self.source_mask is not None:
            length = int(self.source_mask.sum(dim=1).max())  # the longest remaining prompt
            if length < self.source_mask.shape[1]:
                for layer in source_layers:
                    layer.keys, layer.values = layer.keys[..., :length, :].contiguous(), layer.values[..., :length, :].contiguous()
                self.source_mask = self.source_mask[:, :length]

    @property
    def cached_tokens(self) -> int:
        """Cache columns held right now over all rows (padding included): what memory holds."""
        source = self.source_mask.numel() if self.source_mask is not None else 0
        return self.self_mask.numel() + source


def _pad(tensor: torch.Tensor, size: int, *, left: bool) -> torch.Tensor:
    """Zero-pad the sequence axis (the last of a mask, the second to last of keys/values)."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = size - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    padding = tensor.new_zeros(shape)
    return torch.cat([padding, tensor] if left else [tensor, padding], dim=axis)


class EncoderDecoderFamily:
    """T5-style bases: the prompt goes through the encoder once; the decoder starts from the
    decoder start token and reads the encoder through a cross-attention cache fixed per row."""

    def __init__(self, config: Any, pad_token_id: int):
        self.start = config.decoder_start_token_id if config.decoder_start_token_id is not None else pad_token_id
        self.pad = pad_token_id
        self.hidden = config.d_model

    def prefill(self, model: Any, rows: Sequence[Row], extra: dict[str, Any]) -> tuple[torch.Tensor, Batch]:
        device = next(model.parameters()).device
        longest = max(len(r.input_ids) for r in rows)
        input_ids = torch.full((len(rows), longest), self.pad, dtype=torch.long, device=device)
        source_mask = torch.zeros((len(rows), longest), dtype=torch.long, device=device)
        for i, row in enumerate(rows):  # right padding, as the tokenizer pads T5 prompts
            input_ids[i, : len(row.input_ids)] = torch.tensor(row.input_ids, device=device)
            source_mask[i, : len(row.input_ids)] = 1
        start = torch.full((len(rows), 1), self.start, dtype=torch.long, device=device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        output = model(input_ids=input_ids, attention_mask=source_mask, decoder_input_ids=start,
                       past_key_values=cache, use_cache=True, **extra)
        batch = Batch(
            ids=[r.id for r in rows], cache=output.past_key_values,
            self_mask=torch.ones((len(rows), 1), dtype=torch.long, device=device), source_mask=source_mask,
            last=start[:, 0], history=[[self.start] for _ in rows], decoding=[r.decoding for r in rows],
            adapters=[r.adapter for r in rows],
        )
        return output.logits[:, -1, :], batch

    def step(self, model: Any, batch: Batch, extra: dict[str, Any]) -> torch.Tensor:
        rows, columns = batch.source_mask.shape  # type: ignore[union-attr]
        # The cross-attention keys/values are cached: the encoder states are only shape here.
        encoder = torch.zeros((1, 1, self.hidden), dtype=model.dtype, device=batch.last.device).expand(rows, columns, -1)
        new_column = batch.self_mask.new_ones((rows, 1))
        output = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder), attention_mask=batch.source_mask,
            decoder_input_ids=batch.last[:, None], decoder_attention_mask=torch.cat([batch.self_mask, new_column], dim=1),
            past_key_values=batch.cache, use_cache=True, **extra,
        )
        batch.self_mask = torch.cat([batch.self_mask, new_column], dim=1)
        return output.logits[:, -1, :]


class CausalFamily:
    """Decoder-only bases: the prompt fills the self-attention cache at admission, each step adds one
    column; positions are counted per row over its real (unpadded) columns."""

    def __init__(self, model: Any, pad_token_id: int):
        self.pad = pad_token_id
        # Only the last position's logits are needed (what `generate` asks for where the model can).
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def prefill(self, model: Any, rows: Sequence[Row], extra: dict[str, Any]) -> tuple[torch.Tensor, Batch]:
        device = next(model.parameters()).device
        longest = max(len(r.input_ids) for r in rows)
        input_ids = torch.full((len(rows), longest), self.pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), longest), dtype=torch.long, device=device)
        for i, row in enumerate(rows):  # left padding: every prompt ends in the last column
            input_ids[i, longest - len(row.input_ids):] = torch.tensor(row.input_ids, device=device)
            mask[i, longest - len(row.input_ids):] = 1
        output = model(input_ids=input_ids, attention_mask=mask, position_ids=_positions(mask),
                       past_key_values=DynamicCache(), use_cache=True, **self.last_only, **extra)
        batch = Batch(
            ids=[r.id for r in rows], cache=output.past_key_values, self_mask=mask, source_mask=None,
            last=input_ids[:, -1], history=[list(r.input_ids) for r in rows], decoding=[r.decoding for r in rows],
            adapters=[r.adapter for r in rows],
        )
        return output.logits[:, -1, :], batch

    def step(self, model: Any, batch: Batch, extra: dict[str, Any]) -> torch.Tensor:
        mask = torch.cat([batch.self_mask, batch.self_mask.new_ones((len(batch.ids), 1))], dim=1)
        output = model(input_ids=batch.last[:, None], attention_mask=mask, position_ids=_positions(mask)[:, -1:],
                       past_key_values=batch.cache, use_cache=True, **self.last_only, **extra)
        batch.self_mask = mask
        return output.logits[:, -1, :]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Each column's position in its row, counting real columns only (padding: 0), as `generate`
    numbers a left-padded batch."""
    return (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)


def runner_family(model: Any, family: ModelFamily, pad_token_id: int) -> Family:
    """The runner's family for a base of this `personafleet.family` family."""
    return CausalFamily(model, pad_token_id) if family.causal else EncoderDecoderFamily(model.config, pad_token_id)


class StepRunner:
    """The live batch of one worker."""

    def __init__(self, model: Any, family: Family, select_adapters: SelectAdapters = lambda adapters: {}):
        self.model, self.family, self.select_adapters = model, family, select_adapters
        self.batch: Batch | None = None

    def __len__(self) -> int:
        return 0 if self.batch is None else len(self.batch.ids)

    @property
    def ids(self) -> list[RowId]:
        return [] if self.batch is None else list(self.batch.ids)

    @property
    def cached_tokens(self) -> int:
        return 0 if self.batch is None else self.batch.cached_tokens

    @torch.inference_mode()
    def admit(self, rows: Sequence[Row]) -> dict[RowId, int]:
        """The joining rows' first tokens; from now on they are live."""
        if not rows:
            return {}
        logits, joining = self.family.prefill(self.model, rows, self.select_adapters([r.adapter for r in rows]))
        tokens = self._choose(logits, joining)
        if self.batch is None:
            self.batch = joining
        else:
            self.batch.extend(joining)
        return tokens

    @torch.inference_mode()
    def step(self) -> dict[RowId, int]:
        """One decoder step for every live row: each row's next token."""
        if self.batch is None:
            return {}
        logits = self.family.step(self.model, self.batch, self.select_adapters(self.batch.adapters))
        return self._choose(logits, self.batch)

    def retire(self, ids: Collection[RowId]) -> None:
        """Drop these rows (finished, cancelled or failed) and free their memory now."""
        if self.batch is None:
            return
        keep = [i for i, row in enumerate(self.batch.ids) if row not in ids]
        if not keep:
            self.batch = None
        elif len(keep) < len(self.batch.ids):
            self.batch.keep(keep)

    def _choose(self, logits: torch.Tensor, batch: Batch) -> dict[RowId, int]:
        """Each row's next token under its own options; rows with equal options are processed together."""
        scores = logits.to(dtype=torch.float32)
        chosen = scores.argmax(dim=-1)
        groups: dict[Decoding, list[int]] = {}
        for i, decoding in enumerate(batch.decoding):
            groups.setdefault(decoding, []).append(i)
        for decoding, indices in groups.items():
            processors = decoding.processors()
            if not processors and not decoding.do_sample:
                continue
            index = torch.tensor(indices, device=scores.device)
            history = _history(batch, indices, scores.device)
            processed = processors(history, scores[index])
            if decoding.do_sample:
                chosen[index] = torch.multinomial(torch.softmax(processed, dim=-1), num_samples=1)[:, 0]
            else:
                chosen[index] = processed.argmax(dim=-1)
        batch.last = chosen
        tokens = chosen.tolist()
        for history_row, token in zip(batch.history, tokens, strict=True):
            history_row.append(token)
        return dict(zip(batch.ids, tokens, strict=True))


def _history(batch: Batch, indices: list[int], device: torch.device) -> torch.Tensor:
    """The rows' decoder tokens so far, left-padded with each row's first token (already among
    its tokens, so a repetition penalty sees the same set of tokens)."""
    longest = max(len(batch.history[i]) for i in indices)
    return torch.tensor([[batch.history[i][0]] * (longest - len(batch.history[i])) + batch.history[i]
                         for i in indices], dtype=torch.long, device=device)
