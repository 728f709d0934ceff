"""Per-request validation, routing and batching rules of the fleet handler (no server needed)."""

import json
from pathlib import Path

import pytest

from persona_serving.requests import (
    PersonaVersion, Prepared, Rejected, Routed, describe, key_chunks, option_groups, parse, prepare, route,
)
from personafleet.inference import GenerationLimits, InferenceRequest
from personafleet.persona import PersonaSpec
from personafleet.prompt import Turn, render_prompt
from personafleet.routing import RoutingTable

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
    ],
)
def test_bad_input_is_a_value_not_an_exception(body, status, error):
    parsed = parse(item(body))
    rejected = parsed if isinstance(parsed, Rejected) else route(parsed, TABLE)
    assert isinstance(rejected, Rejected)
    assert (rejected.status, rejected.error) == (status, error)
    assert json.loads(rejected.body())["error"] == error


def test_invalid_utf8_is_refused():
    rejected = parse({"body": b"\xff\xfe{"})
    assert isinstance(rejected, Rejected) and rejected.error == "invalid_json"


def test_requests_with_equal_options_share_one_generate_call_whatever_their_persona():
    greedy = {"max_new_tokens": 8, "do_sample": False}
    items = [
        Prepared("a", greedy, entry()),
        Rejected(400, "invalid_json", "x"),
        Prepared("b", {"max_new_tokens": 4}, entry()),
        Prepared("c", dict(greedy), entry("pm-life", 4)),
    ]
    assert sorted(option_groups(items).values()) == [[0, 3], [2]]


def test_a_batch_needing_more_adapters_than_fit_is_split_by_version():
    request = InferenceRequest(persona="x", message="hi")
    keys = [("a", 1), ("b", 1), ("a", 1), ("c", 1), ("b", 1), ("a", 2)]
    items: list = [Routed(request, *key) for key in keys]
    items.insert(2, Rejected(404, "unknown_persona", "x"))
    assert key_chunks(items, 2) == [[0, 1, 3, 5], [4, 6]]
    assert key_chunks(items, 10) == [[0, 1, 3, 4, 5, 6]]


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
