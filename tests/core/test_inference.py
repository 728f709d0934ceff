import pytest
from pydantic import ValidationError

from personafleet.inference import (
    MAX_CONTEXT_TURNS,
    GenerationLimits,
    GenerationOptions,
    InferenceRequest,
    clamp_generation,
)


def test_request_turns_end_with_the_new_message_as_a_user_turn():
    request = InferenceRequest.model_validate(
        {"context": [{"role": "persona", "text": "hi"}], "message": "как дела?"}
    )
    assert [(t.role, t.text) for t in request.turns()] == [("persona", "hi"), ("user", "как дела?")]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"message": ""},
        {"message": 5},
        {"message": "x", "context": [{"role": "bot", "text": "?"}]},
        {"message": "x", "context": [{"role": "user", "text": "t"}] * (MAX_CONTEXT_TURNS + 1)},
        {"message": "x", "unknown": 1},
        {"message": "x", "version": "1.0"},
        {"message": "x", "version": 0},
    ],
)
def test_malformed_requests_are_rejected(payload):
    with pytest.raises(ValidationError):
        InferenceRequest.model_validate(payload)


def test_generation_options_are_clamped_and_fall_back_to_the_persona_defaults():
    defaults = GenerationOptions(max_new_tokens=64, temperature=0.8)
    merged = clamp_generation(
        defaults,
        GenerationOptions(max_new_tokens=10_000, top_p=5, repetition_penalty=0.1, num_beams=99),
        GenerationLimits(),
    )
    assert merged == {
        "max_new_tokens": 128,
        "temperature": 0.8,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "num_beams": 4,
    }
    assert clamp_generation(GenerationOptions(), None, GenerationLimits())["max_new_tokens"] == 128


def test_a_pinned_version_follows_the_one_version_rule():
    assert InferenceRequest(persona="devops-dude", message="x", version="v3").version == 3
    assert InferenceRequest(message="x", version=2).version == 2


def test_options_of_a_request_that_does_not_sample_carry_no_sampling_parameters():
    from personafleet.inference import without_unused_sampling

    greedy = {"max_new_tokens": 8, "temperature": 0.8, "top_p": 0.9, "top_k": 5, "num_beams": 2}
    assert without_unused_sampling(greedy) == {"max_new_tokens": 8, "num_beams": 2}
    sampling = {**greedy, "do_sample": True}
    assert without_unused_sampling(sampling) == sampling
