"""The inference API contract between the fleet handler and its clients (bot, chat, operator).

`POST /predictions/fleet` (contract 3):
Request:  {"persona": NAME, "version": N?, "conversation": KEY?, "context": [{"role": "user"|"persona", "text": ...}],
           "message": TEXT, "generation": {...}?, "show_facts": BOOL?}
Response: a stream of JSON events, one per line (`application/x-ndjson`, one per HTTP chunk):
          previews {"delta": TEXT, "tokens": N}, one per token (the text it adds, "" while a token
          is not visible text yet; the first also names the "model_version"), then ONE final event {"reply": TEXT, "persona": NAME,
          "model_version": "N", "tokens": N, "finish_reason": "stop"|"length"|"filtered", "facts": [FACT, ...]
          (only when show_facts: the facts retrieved into the prompt)} carrying the authoritative
          whole reply: clients show and store the final event's reply, never the previews glued
          together. A reply that is done at once is a body of one final event.
About:    {"persona": NAME, "version": N?, "about": true} (no message, nothing generated) ->
          {"persona": NAME, "model_version": "N", "base": BASE, "trained_at": ISO|null, "facts": N}
          (a plain JSON body, not a stream)
Errors:   {"error": REASON_CODE, "detail": HUMAN_READABLE} with a 4xx/5xx status: 404
          `unknown_persona` / `unknown_version`, 503 `adapter_unavailable`, 400/413 for bad bodies;
          an error after the stream began is its final event and carries the status it would
          have had ({"error", "detail", "status"}).
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from personafleet.errors import PersonaError
from personafleet.names import MAX_CONTEXT_TURNS, MAX_NEW_TOKENS, MAX_TEXT_CHARS, parse_version
from personafleet.prompt import Turn

# The one TorchServe model per base (contract 3); the persona travels in the body.
FLEET_MODEL = "fleet"
MAX_CONVERSATION_KEY_CHARS = 128


class GenerationOptions(BaseModel):
    """Per-request sampling options. Out-of-range values are clamped by `clamped()`, not refused:
    a client asking for 10 000 tokens gets the cap, not an error."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    do_sample: bool | None = None
    num_beams: int | None = None


class GenerationLimits(BaseModel):
    """Bounds the server enforces; the reply length cap defaults to 128 tokens (seed 004)."""

    max_new_tokens: int = Field(128, ge=1, le=MAX_NEW_TOKENS)
    max_temperature: float = 2.0
    min_temperature: float = 0.05
    max_top_k: int = 200
    max_repetition_penalty: float = 2.0
    max_num_beams: int = 4


def clamp_generation(
    defaults: GenerationOptions, requested: GenerationOptions | None, limits: GenerationLimits
) -> dict:
    """Merge request options over the persona's defaults and clamp every value into its bounds."""
    merged = defaults.model_dump(exclude_none=True)
    if requested is not None:
        merged.update(requested.model_dump(exclude_none=True))
    clamp = lambda value, low, high: max(low, min(high, value))  # noqa: E731
    if "max_new_tokens" in merged:
        merged["max_new_tokens"] = clamp(merged["max_new_tokens"], 1, limits.max_new_tokens)
    else:
        merged["max_new_tokens"] = limits.max_new_tokens
    if "temperature" in merged:
        merged["temperature"] = clamp(merged["temperature"], limits.min_temperature, limits.max_temperature)
    if "top_p" in merged:
        merged["top_p"] = clamp(merged["top_p"], 0.01, 1.0)
    if "top_k" in merged:
        merged["top_k"] = clamp(merged["top_k"], 1, limits.max_top_k)
    if "repetition_penalty" in merged:
        merged["repetition_penalty"] = clamp(merged["repetition_penalty"], 1.0, limits.max_repetition_penalty)
    if "num_beams" in merged:
        merged["num_beams"] = clamp(merged["num_beams"], 1, limits.max_num_beams)
    return merged


SAMPLING_ONLY = ("temperature", "top_p", "top_k")


def without_unused_sampling(options: dict) -> dict:
    """Clamped options minus the sampling parameters when the request does not sample: they mean
    nothing to greedy or beam search, so requests that differ only there decode alike (one batch
    group, the same evaluation as serving), and `generate` does not warn on every call."""
    if options.get("do_sample", False):
        return options
    return {key: value for key, value in options.items() if key not in SAMPLING_ONLY}


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Required by the fleet; clients build a conversation first and `InferenceClient.reply` names it.
    persona: str | None = Field(None, max_length=64)
    version: int | None = Field(None, description="pin a version (any the routing table lists); default: the serving one")
    conversation: str | None = Field(
        None, min_length=1, max_length=MAX_CONVERSATION_KEY_CHARS,
        description="an opaque key of the conversation (`personafleet.routing.conversation_key`): during a canary "
        "every turn of one conversation is answered by the same version")
    about: bool = Field(False, description="describe the version that would answer instead of answering")
    context: list[Turn] = Field(default_factory=list, max_length=MAX_CONTEXT_TURNS)
    message: str = Field("", max_length=MAX_TEXT_CHARS, validate_default=True, description="required unless `about`")
    generation: GenerationOptions | None = None
    show_facts: bool = Field(False, description="return the facts retrieved into the prompt with the reply")

    @field_validator("message")
    @classmethod
    def _a_message_to_answer(cls, message: str, info: ValidationInfo) -> str:
        if not message and not info.data.get("about"):
            raise PydanticCustomError("missing", "Field required")
        return message

    @field_validator("version", mode="before")
    @classmethod
    def _one_version_rule(cls, value: object) -> int | None:
        if value is None:
            return None
        try:
            return parse_version(value)  # type: ignore[arg-type]
        except PersonaError as exc:
            raise ValueError(str(exc)) from None

    def turns(self) -> list[Turn]:
        """The conversation the prompt is built from: the context, then the new message."""
        return [*self.context, Turn(role="user", text=self.message)]


class InferenceResponse(BaseModel):
    """The final event of a reply (the whole-reply answer)."""

    reply: str
    persona: str
    model_version: str
    tokens: int
    finish_reason: str = Field("stop", description="stop: the model ended it; length: it hit its token cap; "
                               "filtered: a reply filter rule matched, `reply` is the fallback")
    facts: list[str] | None = Field(None, description="the facts retrieved into the prompt (asked with show_facts)")


class StreamPreview(BaseModel):
    """An event before the final one: text generated since the previous event. The first preview
    names the version that answers (a client that stops early still knows it)."""

    delta: str
    tokens: int
    model_version: str | None = None


class PersonaAbout(BaseModel):
    """What a version is (the answer to an `about` request; the bot's /persona shows it)."""

    persona: str
    model_version: str
    base: str = Field(description="the base model its adapter was trained on")
    trained_at: datetime | None = Field(None, description="when its training run finished")
    facts: int = Field(0, description="facts it knows (its knowledge.json)")


class InferenceError(BaseModel):
    error: str
    detail: str
    status: int | None = Field(None, description="only in a stream's final event: the HTTP status it stands for")


STREAM_CONTENT_TYPE = "application/x-ndjson; charset=utf-8"
StreamEvent = StreamPreview | InferenceResponse | InferenceError


def parse_event(line: str | bytes) -> StreamEvent:
    """One line of a reply stream; ValueError when it is none of the three events."""
    payload = json.loads(line)
    if not isinstance(payload, dict):
        raise ValueError(f"a stream event is a JSON object, got {type(payload).__name__}")
    kind = InferenceError if "error" in payload else InferenceResponse if "reply" in payload else StreamPreview
    return kind.model_validate(payload)


def final_event(body: str | bytes) -> InferenceResponse | InferenceError:
    """The final event of a whole reply body (what a client that does not stream reads)."""
    lines = [line for line in (body.decode("utf-8") if isinstance(body, bytes) else body).splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty reply body")
    event = parse_event(lines[-1])
    if isinstance(event, StreamPreview):
        raise ValueError("the reply stream ended without its final event")
    return event
