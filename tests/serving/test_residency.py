"""The worker's adapter LRU (no torch): order, eviction, reload, a failed load evicts nothing."""

import pytest

from persona_serving.residency import AdapterLRU


class Loads:
    def __init__(self, failing: set[str] = frozenset()):
        self.loaded: list[str] = []
        self.unloaded: list[str] = []
        self.failing = failing

    def load(self, key: str) -> str:
        if key in self.failing:
            raise RuntimeError(f"cannot load {key}")
        self.loaded.append(key)
        return key.upper()

    def unload(self, key: str, value: str) -> None:
        assert value == key.upper()
        self.unloaded.append(key)


def test_the_least_recently_used_adapter_is_evicted_and_reloaded_when_asked_again():
    loads = Loads()
    lru = AdapterLRU(2, loads.load, loads.unload)
    assert lru.get("a") == ("A", [])
    assert lru.get("b") == ("B", [])
    assert lru.get("a") == ("A", [])  # a hit: no load, a becomes newest
    assert lru.get("c") == ("C", ["b"])
    assert lru.keys() == ["a", "c"] and "b" not in lru
    assert lru.get("b") == ("B", ["a"])
    assert loads.loaded == ["a", "b", "c", "b"] and loads.unloaded == ["b", "a"]


def test_a_failed_load_evicts_nothing():
    loads = Loads(failing={"bad"})
    lru = AdapterLRU(1, loads.load, loads.unload)
    lru.get("a")
    with pytest.raises(RuntimeError):
        lru.get("bad")
    assert lru.keys() == ["a"] and loads.unloaded == []


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        AdapterLRU(0, str, lambda k, v: None)


def test_an_adapter_in_use_is_never_evicted_and_the_lru_shrinks_back_once_free():
    loads = Loads()
    lru = AdapterLRU(2, loads.load, loads.unload)
    lru.get("a"), lru.get("b")
    assert lru.get("c", busy={"a"}) == ("C", ["b"])  # b is the oldest not in use
    assert lru.get("d", busy={"a", "c"}) == ("D", [])  # all in use: held beyond capacity for now
    assert lru.keys() == ["a", "c", "d"]
    assert lru.get("e", busy={"d"}) == ("E", ["a", "c"])  # back to capacity as soon as they are free
    assert lru.keys() == ["d", "e"]


def test_an_idle_entry_held_beyond_capacity_leaves_before_the_next_load():
    """The fleet has capacity + 1 slots: with a and c busy and d (waiting) in the spare slot, e's
    load would find no slot - unless d, idle and over capacity, leaves first."""
    loads = Loads()
    slots = 3  # capacity + 1

    def load(key: str) -> str:
        assert len(loads.loaded) - len(loads.unloaded) < slots, f"no free slot for {key}"
        return loads.load(key)

    lru = AdapterLRU(2, load, loads.unload)
    lru.get("a"), lru.get("c")
    assert lru.get("d", busy={"a", "c"}) == ("D", [])  # the spare slot
    assert lru.get("e", busy={"a", "c"}) == ("E", ["d"])  # d left first: e found the spare slot
    assert lru.keys() == ["a", "c", "e"]
