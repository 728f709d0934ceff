"""Which adapters a worker keeps loaded: an LRU of at most `capacity` entries.

Plain code (no torch, no TorchServe) so eviction order is tested directly. `load` and `unload`
are the worker's: load reads an adapter from the store onto the device, unload frees it
(`delete_adapter`). A batch asks for each adapter it needs once and holds at most `capacity`
distinct ones (the handler splits larger mixes), so an adapter in use is never the one evicted:
each `get` makes its key the newest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
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

    def get(self, key: K) -> tuple[V, list[K]]:
        """The entry for `key`, loading it on a miss; returns it with the keys evicted to make room.
        The new entry is loaded BEFORE the oldest is evicted: a failed load evicts nothing."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key], []
        value = self._load(key)
        self._entries[key] = value
        evicted = []
        while len(self._entries) > self.capacity:
            old, old_value = self._entries.popitem(last=False)
            self._unload(old, old_value)
            evicted.append(old)
        return value, evicted
