"""The step scheduler's rules, without torch: states, caps, queueing, finish reasons."""

import pytest

from persona_serving.scheduler import FinishReason, Limits, State, StepScheduler, padded_footprint

EOS = 1


def scheduler(rows: int = 4, tokens: int = 10_000) -> StepScheduler:
    return StepScheduler(Limits(max_live_rows=rows, max_cached_tokens=tokens), [EOS])


def test_requests_wait_until_admitted_then_run_in_arrival_order():
    s = scheduler()
    a, b = s.submit("a", 10, 8), s.submit("b", 5, 8)
    assert a.state is b.state is State.WAITING and s.ids() == {"a", "b"}
    assert [x.id for x in s.admit()] == ["a", "b"]
    assert a.state is State.RUNNING and list(s.running) == ["a", "b"] and not s.waiting
    assert s.admit() == []  # nothing left to admit


def test_rows_finish_at_eos_or_their_cap_and_leave_the_running_set():
    s = scheduler()
    s.submit("short", 4, 2), s.submit("eos", 4, 10), s.submit("long", 4, 10)
    s.admit()
    assert s.record({"short": 7, "eos": 9, "long": 9}) == []
    done = s.record({"short": 8, "eos": EOS, "long": 5})
    assert {(x.id, x.finish_reason) for x in done} == {("short", FinishReason.LENGTH), ("eos", FinishReason.STOP)}
    assert list(s.running) == ["long"] and s.running["long"].generated == [9, 5]
    assert done[0].state is State.FINISHED and done[0].generated == [7, 8]


def test_over_the_live_row_cap_requests_queue_and_join_when_a_row_leaves():
    s = scheduler(rows=2)
    for name in "abc":
        s.submit(name, 3, 1)
    assert [x.id for x in s.admit()] == ["a", "b"] and list(s.waiting) == ["c"]
    s.record({"a": 5, "b": 5})  # both reach their cap of 1 token
    assert [x.id for x in s.admit()] == ["c"]


def test_the_cached_token_cap_counts_the_padded_batch_and_queues_over_it():
    # Footprint of a padded batch: rows x (longest prompt + highest cap + start token).
    s = scheduler(rows=10, tokens=100)
    s.submit("a", 10, 9)  # alone: 20
    s.submit("b", 30, 9)  # with a: 2 x (30 + 9 + 1) = 80
    s.submit("c", 1, 1)  # with both: 3 x 40 = 120 > 100: waits, although it is tiny
    assert [x.id for x in s.admit()] == ["a", "b"] and s.cached_tokens == 80
    assert list(s.waiting) == ["c"]
    s.record({"b": EOS, "a": 3})
    assert s.cached_tokens == 20 and [x.id for x in s.admit()] == ["c"]


def test_the_oldest_waiting_request_is_never_overtaken():
    s = scheduler(rows=10, tokens=100)
    s.submit("a", 40, 9)
    s.submit("big", 40, 9)  # 2 x 50 = 100: fits
    s.admit()
    s.submit("wide", 45, 9)  # 3 x 55 > 100: must wait
    s.submit("small", 1, 1)  # would fit on its own budget, but arrived later
    assert s.admit() == [] and list(s.waiting) == ["wide", "small"]


def test_a_request_that_can_never_fit_is_refused_at_submit():
    s = scheduler(tokens=50)
    with pytest.raises(ValueError, match="never fit"):
        s.submit("x", 40, 10)
    with pytest.raises(ValueError, match="already"):
        s.submit("y", 1, 1) and s.submit("y", 1, 1)


def test_cancel_retires_waiting_and_running_requests_and_ignores_unknown_ones():
    s = scheduler(rows=1)
    s.submit("run", 1, 5), s.submit("wait", 1, 5)
    s.admit()
    assert s.cancel("wait").finish_reason is FinishReason.CANCELLED and "wait" not in s
    gone = s.cancel("run", FinishReason.ERROR)
    assert gone.state is State.FINISHED and gone.finish_reason is FinishReason.ERROR and not s.running
    assert s.cancel("nobody") is None


def test_padded_footprint_of_nothing_is_zero():
    assert padded_footprint([]) == 0
    with pytest.raises(ValueError):
        Limits(0, 10)


def test_live_rows_use_at_most_max_adapters_distinct_versions():
    s = StepScheduler(Limits(max_live_rows=10, max_cached_tokens=10_000, max_adapters=2), [EOS])
    s.submit("a1", 1, 1, "a"), s.submit("b1", 1, 5, "b"), s.submit("a2", 1, 5, "a"), s.submit("c1", 1, 5, "c")
    assert [x.id for x in s.admit()] == ["a1", "b1", "a2"] and list(s.waiting) == ["c1"]
    assert s.live_adapters() == {"a", "b"}
    s.record({"a1": 3, "b1": 3, "a2": 3})  # a1 leaves, but a2 still uses adapter a
    assert s.admit() == []
    s.cancel("a2")
    assert [x.id for x in s.admit()] == ["c1"] and s.live_adapters() == {"b", "c"}
