"""The fleet handler one step at a time, driven as TorchServe's continuous batching drives it
(tests/fixtures/handler.py).

Deterministic where a live server is not: which step a row joins, a client that goes away
between two steps, a request held back by the cache budget, a step that fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personafleet.inference import InferenceError, InferenceResponse, StreamPreview, parse_event
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.routing import version_dir
from tests.fixtures.torchserve import OTHER_PERSONA, PERSONA
from tests.fixtures.handler import Worker, final, start_worker, whole_reply_path

CAP = 12


def ask(message: str, persona: str = PERSONA, **generation) -> dict:
    return {"persona": persona, "message": message, "generation": {"max_new_tokens": CAP, **generation}}


@pytest.fixture()
def make_worker(fleet_store: Path, tiny_base: Path, tmp_path: Path):
    """A handler on the fixture store, as a TorchServe worker with batchSize 4 initializes it."""

    def make(max_cached_tokens: int = 4096) -> Worker:
        return start_worker(tmp_path, tiny_base, fleet_store, max_new_tokens=CAP, max_cached_tokens=max_cached_tokens)

    return make


@pytest.fixture()
def worker(make_worker) -> Worker:
    return make_worker()


@pytest.fixture(scope="module")
def whole_reply(fleet_store: Path, tiny_base: Path):
    return whole_reply_path(tiny_base, fleet_store, max_new_tokens=CAP)


def test_each_call_is_one_step_and_the_stream_ends_with_the_whole_reply(worker):
    answers = worker.until_done({k: [v] for k, v in worker.step({"a": ask("как деплой?")}).items()})["a"]
    end = final(answers)
    assert isinstance(end, InferenceResponse) and end.persona == PERSONA and end.model_version == "1"
    assert len(answers) == end.tokens  # one token per call (the tiny model may stop before the cap)
    assert end.finish_reason == ("length" if end.tokens == CAP else "stop")
    assert [a.go_on for a in answers] == [True] * (len(answers) - 1) + [False]
    previews = [parse_event(a.body) for a in answers[:-1]]
    assert all(isinstance(p, StreamPreview) for p in previews)  # one preview per token, visible text or not
    assert [p.tokens for p in previews] == list(range(1, len(answers)))
    shown = "".join(p.delta for p in previews)
    assert shown and end.reply.startswith(shown)  # previews grow the reply; the final event completes it
    assert worker.handler.runner.cached_tokens == 0 and not worker.handler.streams


def test_rows_joining_at_different_steps_and_personas_match_the_whole_reply_path(worker, whole_reply):
    """Greedy (the personas sample by default) with their default repetition penalty of 1.2."""
    greedy = {"do_sample": False}
    bodies = {"a": ask("что там с релизом?", **greedy), "b": ask("привет, коллеги", OTHER_PERSONA, **greedy),
              "c": ask("кто сломал прод", OTHER_PERSONA, **greedy), "d": ask("деплой упал", **greedy)}
    answers = worker.run([{"a": bodies["a"]}, {}, {"b": bodies["b"], "c": bodies["c"]}, {}, {}, {"d": bodies["d"]}])
    for request_id, body in bodies.items():
        event = final(answers[request_id])
        assert isinstance(event, InferenceResponse) and event.persona == body["persona"]
        assert event.reply == whole_reply(body), request_id


def test_a_request_missing_from_a_call_lost_its_client_and_its_row_leaves_at_once(worker):
    worker.step({"stays": ask("раз"), "leaves": ask("два", OTHER_PERSONA)})
    assert set(worker.handler.runner.ids) <= {"stays", "leaves"}
    answers = worker.step(drop={"leaves"})
    assert "leaves" not in answers and "leaves" not in worker.handler.streams
    assert "leaves" not in worker.handler.runner.ids and "leaves" not in worker.handler.scheduler
    worker.until_done({})


def test_over_the_cache_budget_a_request_waits_silently_then_runs(make_worker):
    worker = make_worker(64 + CAP + 1)  # room for exactly one request of the longest prompt
    first = worker.step({"first": ask("раз " * 40)})
    second = worker.step({"second": ask("два " * 40)})
    assert second["second"].body == "" and second["second"].go_on is True  # nothing on the wire yet
    assert list(worker.handler.scheduler.waiting) == ["second"] and worker.handler.runner.ids == ["first"]
    answers = worker.until_done({k: [v] for k, v in (first | second).items()})
    assert isinstance(final(answers["second"]), InferenceResponse)
    assert isinstance(final(answers["first"]), InferenceResponse)


def test_refused_and_one_step_requests_are_plain_responses_beside_a_stream(worker):
    answers = worker.step({"ok": ask("привет"), "nobody": ask("привет", "no-such-persona"),
                           "short": ask("привет", max_new_tokens=1), "bad": {"persona": PERSONA}})
    assert (answers["nobody"].status, answers["nobody"].go_on) == (404, None)
    assert json.loads(answers["nobody"].body)["error"] == "unknown_persona"
    assert (answers["bad"].status, json.loads(answers["bad"].body)["error"]) == (400, "missing_field")
    short = answers["short"]
    assert short.go_on is None and short.status == 200  # done in its first step: one plain answer
    assert isinstance(final([short]), InferenceResponse) and final([short]).tokens == 1
    assert answers["ok"].go_on is True or answers["ok"].go_on is None
    worker.until_done({})


def test_a_failing_step_ends_its_rows_with_an_error_event_and_the_worker_goes_on(worker, monkeypatch):
    worker.step({"a": ask("раз"), "b": ask("два", OTHER_PERSONA)})
    family = worker.handler.runner.family
    real_step = family.step

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(family, "step", out_of_memory)
    answers = worker.step()
    for request_id in ("a", "b"):
        event = parse_event(answers[request_id].body)
        assert isinstance(event, InferenceError) and (event.error, event.status) == ("generation_failed", 503)
        assert answers[request_id].go_on is False
    assert worker.handler.runner.batch is None and not worker.handler.streams
    monkeypatch.setattr(family, "step", real_step)
    later = worker.until_done({k: [v] for k, v in worker.step({"c": ask("три")}).items()})
    assert isinstance(final(later["c"]), InferenceResponse)


def test_an_adapter_that_fails_refuses_only_its_request(worker, fleet_store: Path):
    folder = version_dir(fleet_store, PERSONA, 2)
    spec_file = folder / PERSONA_FILE
    original = spec_file.read_bytes()
    spec_file.write_text("{not json", encoding="utf-8")
    try:
        answers = worker.step({"pinned-broken": ask("раз") | {"version": 2}, "fine": ask("два")})
    finally:
        spec_file.write_bytes(original)
    assert answers["pinned-broken"].status == 503 and answers["pinned-broken"].go_on is None
    assert json.loads(answers["pinned-broken"].body)["error"] == "adapter_unavailable"
    assert isinstance(final(worker.until_done({k: [v] for k, v in answers.items() if k == "fine"})["fine"]),
                      InferenceResponse)
    PersonaSpec.model_validate_json(original)  # the store is as it was
