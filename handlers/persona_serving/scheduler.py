"""Step-level scheduling for the fleet worker: which requests decode this step, which wait, which
are done - and why.

Like vLLM's scheduler, it knows requests, budgets and states and nothing about tensors (the model
runner, `persona_serving.runner`, knows tensors and nothing about requests), so every rule here is
plain code tested directly. A request is WAITING until the caps let it in, RUNNING while it
decodes one token per step, FINISHED with a reason: `stop` (an end-of-sequence token), `length`
(its token cap), `cancelled` (its client went away), `error` (the model step failed) or
`filtered` (a reply filter rule matched the text so far).

Caps keep a worker's memory bounded; over any, requests wait in arrival order (the first one
that does not fit holds the others back, so a long request is never starved by short ones):
- live rows (`max_live_rows`): rows decoded together in one step;
- adapters (`max_adapters`): distinct persona versions among the live rows, at most the adapters
  a worker keeps resident, so an adapter is never evicted under a row that uses it;
- cached tokens (`max_cached_tokens`): what the runner's padded key/value caches may hold at most.
  The runner keeps one padded batch, so its footprint is rows x (longest prompt + longest reply
  cap + the start token): on an encoder-decoder base the cross-attention cache is padded to the
  longest prompt and the self-attention cache is at most as wide as the oldest live row is old,
  which is at most its cap; on a causal base the self-attention cache holds prompt + reply, so it
  is at most the longest prompt plus the highest cap wide. Reserving the worst case at admission
  means a running row never runs out of room.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum


class State(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, Enum):
    STOP = "stop"  # the model ended the reply (end-of-sequence token)
    LENGTH = "length"  # the reply reached its token cap
    CANCELLED = "cancelled"  # the client went away (disconnect, stop button)
    ERROR = "error"  # the model step failed for this row
    FILTERED = "filtered"  # a reply filter rule matched the text so far: the fallback replaces the reply


@dataclass(frozen=True)
class Limits:
    max_live_rows: int
    max_cached_tokens: int
    max_adapters: int | None = None  # None: any number

    def __post_init__(self) -> None:
        if min(self.max_live_rows, self.max_cached_tokens, self.max_adapters or 1) < 1:
            raise ValueError("max_live_rows, max_cached_tokens and max_adapters must be at least 1")


@dataclass
class Sequence:
    """One request's row: its budget, what it generated so far, and its state."""

    id: str
    prompt_tokens: int
    max_new_tokens: int
    adapter: Hashable = None
    arrived: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    state: State = State.WAITING
    finish_reason: FinishReason | None = None

    @property
    def footprint(self) -> int:
        """Cached tokens this row needs at most, alone: its prompt, its reply cap, the start token."""
        return self.prompt_tokens + self.max_new_tokens + 1


def padded_footprint(rows: Collection[Sequence]) -> int:
    """Cached tokens a padded batch of these rows needs at most (see the module's docstring)."""
    if not rows:
        return 0
    return len(rows) * (max(r.prompt_tokens for r in rows) + max(r.max_new_tokens for r in rows) + 1)


class StepScheduler:
    def __init__(self, limits: Limits, eos_token_ids: Iterable[int]):
        self.limits = limits
        self.eos = frozenset(eos_token_ids)
        self.waiting: OrderedDict[str, Sequence] = OrderedDict()
        self.running: OrderedDict[str, Sequence] = OrderedDict()

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.waiting or request_id in self.running

    def ids(self) -> set[str]:
        return set(self.waiting) | set(self.running)

    def live_adapters(self) -> set[Hashable]:
        """The adapters the running rows use (never to be evicted under them)."""
        return {sequence.adapter for sequence in self.running.values()}

    @property
    def cached_tokens(self) -> int:
        """The running rows' reserved footprint (what the caps are checked against)."""
        return padded_footprint(self.running.values())

    def submit(self, request_id: str, prompt_tokens: int, max_new_tokens: int, adapter: Hashable = None) -> Sequence:
        """Queue a request. One that could never fit, even alone, is a configuration error: the
        serving settings guarantee max_cached_tokens >= longest prompt + highest cap."""
        if request_id in self:
            raise ValueError(f"request {request_id} is already scheduled")
        sequence = Sequence(request_id, prompt_tokens, max_new_tokens, adapter)
        if sequence.footprint > self.limits.max_cached_tokens:
            raise ValueError(f"a request of {prompt_tokens} prompt + {max_new_tokens} reply tokens can never fit "
                             f"max_cached_tokens={self.limits.max_cached_tokens}")
        self.waiting[request_id] = sequence
        return sequence

    def admit(self) -> list[Sequence]:
        """Move waiting requests, oldest first, into the running set while both caps allow."""
        admitted: list[Sequence] = []
        while self.waiting:
            head = next(iter(self.waiting.values()))
            rows = [*self.running.values(), head]
            if (len(rows) > self.limits.max_live_rows or padded_footprint(rows) > self.limits.max_cached_tokens
                    or len({r.adapter for r in rows}) > (self.limits.max_adapters or len(rows))):
                break
            del self.waiting[head.id]
            head.state = State.RUNNING
            self.running[head.id] = head
            admitted.append(head)
        return admitted

    def record(self, tokens: dict[str, int]) -> list[Sequence]:
        """Append each running row's new token; returns the rows this finished (stop or length)."""
        finished = []
        for request_id, token in tokens.items():
            sequence = self.running[request_id]
            sequence.generated.append(token)
            if token in self.eos:
                finished.append(self._finish(sequence, FinishReason.STOP))
            elif len(sequence.generated) >= sequence.max_new_tokens:
                finished.append(self._finish(sequence, FinishReason.LENGTH))
        return finished

    def cancel(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED) -> Sequence | None:
        """Finish a waiting or running request early (client gone, or its step failed)."""
        sequence = self.waiting.get(request_id) or self.running.get(request_id)
        return None if sequence is None else self._finish(sequence, reason)

    def _finish(self, sequence: Sequence, reason: FinishReason) -> Sequence:
        self.waiting.pop(sequence.id, None)
        self.running.pop(sequence.id, None)
        sequence.state, sequence.finish_reason = State.FINISHED, reason
        return sequence
