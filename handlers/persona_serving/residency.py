"""Which adapters a worker keeps loaded: an LRU of at most `capacity` entries.

Plain code (no torch, no TorchServe) so eviction order is tested directly. `load` and `unload`
are the worker's: load reads an adapter from the store into a slot, unload frees the slot. An adapter in use is never the one evicted: the caller names the keys its
live rows use (`busy`), and eviction skips them. The step scheduler admits at most `capacity`
distinct versions into the live batch, so there is always room once a row of an old version
leaves; until then a request arriving for yet another version may hold its adapter beyond
`capacity` (its rows wait for a place in the batch). The fleet has `capacity + 1` slots: a new
adapter is loaded into the spare one before the oldest leaves, and an entry held beyond capacity
that is idle again leaves BEFORE the next load, so that load always finds its spare slot.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AdapterLRU(Generic[K, V]):
    def __init__(self, capacity: int, load: Callable[[K], V], unload: Callable[[K, V], None]):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._load, self._unload = load, unload
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        """Oldest first."""
        return list(self._entries)

    def get(self, key: K, busy: Collection[K] = ()) -> tuple[V, list[K]]:
        """The entry for `key`, loading it on a miss; returns it with the keys evicted to make room
        (the oldest first, never one in `busy`). The new entry is loaded BEFORE anything within
        capacity is evicted: a failed load evicts nothing the LRU would keep."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key], []
        evicted = self._evict(busy, self.capacity)  # idle entries held beyond capacity: the spare slot back
        value = self._load(key)
        self._entries[key] = value
        return value, evicted + self._evict({*busy, key}, self.capacity)

    def _evict(self, keep: Collection[K], size: int) -> list[K]:
        """Unload the oldest entries not in `keep` until at most `size` remain (or none can go)."""
        idle = [old for old in self._entries if old not in keep]
        evicted = idle[: max(0, len(self._entries) - size)]
        for old in evicted:
            self._unload(old, self._entries.pop(old))
        return evicted
