"""Per-request validation, routing and batching rules of the fleet handler (no server needed)."""

import json
from pathlib import Path

import pytest

from persona_serving.requests import (
    PersonaVersion, Prepared, Rejected, Routed, describe, parse, prepare, route,
)
from personafleet.inference import GenerationLimits, InferenceRequest
from personafleet.persona import PersonaSpec
from personafleet.prompt import Turn, render_prompt
from personafleet.routing import RoutingTable, conversation_key, update_routing

LIMITS = GenerationLimits()
TABLE = RoutingTable()
TABLE.add("devops-dude", 1, serve=True)
TABLE.add("devops-dude", 2, serve=False)
TABLE.add("pm-life", 4, serve=True)


def entry(persona: str = "devops-dude", version: int = 1, **spec) -> PersonaVersion:
    return PersonaVersion(persona, version, PersonaSpec(name=persona, **spec), Path("/store") / persona / f"v{version}")


def item(body) -> dict:
    """A request as TorchServe hands it over: JSON bodies parsed, anything else as bytes."""
    return {"body": body if isinstance(body, (dict, list)) else body.encode("utf-8")}


def test_a_valid_request_is_routed_and_gets_its_versions_prompt_with_clamped_options():
    body = {"persona": "pm-life", "context": [{"role": "persona", "text": "ку"}], "message": "как дела?",
            "generation": {"max_new_tokens": 10_000, "temperature": 9.0, "do_sample": True}}
    routed = route(parse(item(body)), TABLE)
    assert isinstance(routed, Routed) and routed.key == ("pm-life", 4)
    resident = entry("pm-life", 4, description="Я менеджер продукта.")
    prepared = prepare(routed, resident, LIMITS)
    expected = render_prompt(resident.spec.template, "Я менеджер продукта.",
                             [Turn(role="persona", text="ку"), Turn(role="user", text="как дела?")])
    assert prepared.prompt == expected and prepared.entry is resident
    assert prepared.options["max_new_tokens"] == LIMITS.max_new_tokens
    assert prepared.options["temperature"] == LIMITS.max_temperature


def test_raw_bytes_json_is_accepted_and_a_listed_version_may_be_pinned():
    routed = route(parse({"body": json.dumps({"persona": "devops-dude", "version": "v2", "message": "hi"}).encode()}), TABLE)
    assert isinstance(routed, Routed) and routed.key == ("devops-dude", 2)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ("not json", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_request"),
        ({"persona": "devops-dude", "context": []}, 400, "missing_field"),
        ({"message": "hi"}, 400, "missing_field"),
        ({"persona": "devops-dude", "message": 5}, 400, "invalid_request"),
        ({"persona": "devops-dude", "message": "hi", "version": "1.0"}, 400, "invalid_request"),
        ({"persona": "devops-dude", "message": "hi", "context": [{"role": "bot", "text": "x"}]}, 400, "invalid_request"),
        ({"persona": "devops-dude", "message": "hi", "generation": {"max_new_tokens": "many"}}, 400, "invalid_request"),
        ({"persona": "devops-dude", "message": "x" * 5000}, 413, "too_large"),
        ({"persona": "devops-dude", "message": "hi", "context": [{"role": "user", "text": "x"}] * 51}, 413, "too_large"),
        ({"persona": "someone-else", "message": "hi"}, 404, "unknown_persona"),
        ({"persona": "devops-dude", "version": 3, "message": "hi"}, 404, "unknown_version"),
        ({"persona": "devops-dude", "message": "hi", "conversation": "k" * 129}, 413, "too_large"),
        ({"persona": "devops-dude", "message": "hi", "conversation": ""}, 400, "invalid_request"),
    ],
)
def test_bad_input_is_a_value_not_an_exception(body, status, error):
    parsed = parse(item(body))
    rejected = parsed if isinstance(parsed, Rejected) else route(parsed, TABLE)
    assert isinstance(rejected, Rejected)
    assert (rejected.status, rejected.error) == (status, error)
    assert json.loads(rejected.body())["error"] == error


def test_a_canary_route_answers_each_conversation_with_its_own_version_every_time():
    table = RoutingTable.model_validate(TABLE.model_dump())
    table.weigh("devops-dude", {1: 50, 2: 50})
    answered = {}
    for chat in range(40):
        body = {"persona": "devops-dude", "message": "hi", "conversation": conversation_key(chat, "devops-dude")}
        versions = {route(parse(item(body)), table).key[1] for _ in range(3)}  # type: ignore[union-attr]
        assert len(versions) == 1
        answered[chat] = versions.pop()
    assert set(answered.values()) == {1, 2}
    assert route(parse(item({"persona": "devops-dude", "message": "hi"})), table).key == ("devops-dude", 1)


def test_invalid_utf8_is_refused():
    rejected = parse({"body": b"\xff\xfe{"})
    assert isinstance(rejected, Rejected) and rejected.error == "invalid_json"


def test_about_describes_a_published_version_and_refuses_one_that_is_not(tmp_path):
    from personafleet.store import VersionInfo, write_version_info

    folder = tmp_path / "devops-dude" / "v1"
    (folder / "run").mkdir(parents=True)
    routed = Routed(InferenceRequest(persona="devops-dude", about=True), "devops-dude", 1)
    assert describe(routed, tmp_path) == Rejected(
        503, "adapter_unavailable", f"{folder} is not a published version (no version.json)", "devops-dude", 1)
    write_version_info(folder, VersionInfo(persona="devops-dude", version=1, base="ai-forever/FRED-T5-large"))
    about = describe(routed, tmp_path)
    assert (about.base, about.facts, about.trained_at) == ("ai-forever/FRED-T5-large", 0, None)  # no run report
    (folder / "run" / "report.json").write_text("{}")
    (folder / "knowledge.json").write_text(json.dumps({"facts": ["Живу в Казани", "Мой кот Барсик"]}))
    assert describe(routed, tmp_path).facts == 2 and describe(routed, tmp_path).trained_at is not None


def test_the_base_router_sends_a_conversation_to_the_fleet_of_its_canary_versions_base(tmp_path):
    """A canary on another base (issue 22 + 23): the front picks the version the worker will, per conversation."""
    from persona_serving.bases import BaseRouter, Fleet

    def canary(table: RoutingTable) -> None:
        table.add("devops-dude", 1, serve=True, base="base-a")
        table.add("devops-dude", 2, serve=False, base="base-b")
        table.weigh("devops-dude", {1: 50, 2: 50})

    table = update_routing(tmp_path, canary)
    router = BaseRouter(tmp_path, [Fleet("base-a", "fleet-a"), Fleet("base-b", "fleet-b")])
    for chat in range(20):
        key = conversation_key(chat, "devops-dude")
        body = json.dumps({"persona": "devops-dude", "message": "hi", "conversation": key}).encode()
        expected = "base-a" if table.resolve("devops-dude", conversation=key) == 1 else "base-b"
        assert router.route(body).base == expected
    assert router.route(json.dumps({"persona": "devops-dude", "message": "hi"}).encode()).base == "base-a"
