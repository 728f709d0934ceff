"""Per-request validation and batching rules of the handler (no server needed)."""

import json

import pytest

from persona_serving.requests import Prepared, Rejected, option_groups, prepare
from persona_serving.store import link_name
from personafleet.errors import PersonaError
from personafleet.inference import GenerationLimits
from personafleet.persona import PersonaSpec
from personafleet.prompt import Turn, render_prompt

PERSONA = PersonaSpec(name="devops-dude")
LIMITS = GenerationLimits()


def item(body) -> dict:
    """A request as TorchServe hands it over: JSON bodies parsed, anything else as bytes."""
    return {"body": body if isinstance(body, (dict, list)) else body.encode("utf-8")}


def test_valid_request_uses_the_shared_prompt_and_clamps_options():
    body = {"context": [{"role": "persona", "text": "ку"}], "message": "как дела?",
            "generation": {"max_new_tokens": 10_000, "temperature": 9.0, "do_sample": True}}
    prepared = prepare(item(body), PERSONA, LIMITS)
    assert isinstance(prepared, Prepared)
    expected = render_prompt(PERSONA.template, PERSONA.description,
                             [Turn(role="persona", text="ку"), Turn(role="user", text="как дела?")])
    assert prepared.prompt == expected
    assert prepared.options["max_new_tokens"] == LIMITS.max_new_tokens
    assert prepared.options["temperature"] == LIMITS.max_temperature


def test_raw_bytes_json_is_accepted():
    prepared = prepare({"body": json.dumps({"message": "привет"}).encode()}, PERSONA, LIMITS)
    assert isinstance(prepared, Prepared)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ("not json", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_request"),
        ({"context": []}, 400, "missing_field"),
        ({"message": 5}, 400, "invalid_request"),
        ({"message": "hi", "context": [{"role": "bot", "text": "x"}]}, 400, "invalid_request"),
        ({"message": "hi", "generation": {"max_new_tokens": "many"}}, 400, "invalid_request"),
        ({"message": "x" * 5000}, 413, "too_large"),
        ({"message": "hi", "context": [{"role": "user", "text": "x"}] * 51}, 413, "too_large"),
        ({"message": "hi", "persona": "someone-else"}, 400, "persona_mismatch"),
    ],
)
def test_bad_input_is_a_value_not_an_exception(body, status, error):
    rejected = prepare(item(body), PERSONA, LIMITS)
    assert isinstance(rejected, Rejected)
    assert (rejected.status, rejected.error) == (status, error)
    assert json.loads(rejected.body())["error"] == error


def test_invalid_utf8_is_refused():
    rejected = prepare({"body": b"\xff\xfe"}, PERSONA, LIMITS)
    assert isinstance(rejected, Rejected) and rejected.error == "invalid_json"


def test_requests_with_equal_options_share_one_generate_call():
    items = [
        prepare(item({"message": "a"}), PERSONA, LIMITS),
        prepare(item("broken"), PERSONA, LIMITS),
        prepare(item({"message": "b"}), PERSONA, LIMITS),
        prepare(item({"message": "c", "generation": {"max_new_tokens": 5}}), PERSONA, LIMITS),
    ]
    groups = sorted(option_groups(items).values())
    assert groups == [[0, 2], [3]]


def test_store_urls_map_to_unique_link_names():
    assert link_name("devops-dude/v3/devops-dude.mar") == "devops-dude.v3.mar"
    assert link_name("devops-dude.mar") == "devops-dude.mar"
    with pytest.raises(PersonaError):
        link_name("other/v3/devops-dude.mar")
