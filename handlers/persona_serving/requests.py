"""One request of a batch, from TorchServe's raw item to a prompt - or to the reason it is refused.

Kept apart from the handler (and free of torch) so every rule about bad input is plain,
testable code: errors are values, one per request, never exceptions that would fail the batch.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from personafleet.errors import first_error
from personafleet.inference import GenerationLimits, InferenceError, InferenceRequest, clamp_generation
from personafleet.knowledge import Knowledge, retrieve
from personafleet.persona import PersonaSpec
from personafleet.prompt import render_prompt


@dataclass(frozen=True)
class Prepared:
    """A valid request: the prompt training would have built, and its clamped generation options;
    `facts` and `retrieval_seconds` are for the handler's metrics."""

    prompt: str
    options: dict[str, Any]
    facts: int = 0
    retrieval_seconds: float = 0.0

    def options_key(self) -> tuple:
        return tuple(sorted(self.options.items()))


@dataclass(frozen=True)
class Rejected:
    status: int
    error: str
    detail: str

    def body(self) -> str:
        return InferenceError(error=self.error, detail=self.detail).model_dump_json()


def _payload(item: Any) -> Any:
    """TorchServe gives JSON bodies already parsed (dict) and anything else as bytes."""
    body = item.get("body", item.get("data")) if isinstance(item, dict) else item
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    return body


def _validation_reason(exc: ValidationError) -> Rejected:
    first, detail = exc.errors()[0], first_error(exc, "body")
    if first["type"] in ("too_long", "string_too_long"):
        return Rejected(413, "too_large", detail)
    if first["type"] == "missing":
        return Rejected(400, "missing_field", detail)
    return Rejected(400, "invalid_request", detail)


def prepare(
    item: Any, persona: PersonaSpec, limits: GenerationLimits, knowledge: Knowledge | None = None
) -> Prepared | Rejected:
    """Validate one raw request and render its prompt with the shared `render_prompt`, with the
    facts the shared `retrieve` picks from the version's knowledge (as training did)."""
    try:
        payload = _payload(item)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        return Rejected(400, "invalid_json", f"body is not UTF-8 JSON: {exc.__class__.__name__}: {str(exc)[:200]}")
    if not isinstance(payload, dict):
        return Rejected(400, "invalid_request", f"body must be a JSON object, got {type(payload).__name__}")
    try:
        request = InferenceRequest.model_validate(payload)
    except ValidationError as exc:
        return _validation_reason(exc)
    if request.persona is not None and request.persona != persona.name:
        return Rejected(400, "persona_mismatch", f"this model serves {persona.name!r}, not {request.persona!r}")
    options = clamp_generation(persona.generation, request.generation, limits)
    if not options.get("do_sample", False):
        # Sampling parameters mean nothing to greedy/beam search; dropping them lets such
        # requests share a batch group and keeps `generate` from warning on every call.
        options = {k: v for k, v in options.items() if k not in ("temperature", "top_p", "top_k")}
    turns = request.turns()
    started = time.perf_counter()
    facts = retrieve(knowledge, turns)
    elapsed = time.perf_counter() - started
    return Prepared(render_prompt(persona.template, persona.description, turns, facts), options,
                    facts=len(facts), retrieval_seconds=elapsed if knowledge is not None else 0.0)


def option_groups(items: Sequence[Prepared | Rejected]) -> dict[tuple, list[int]]:
    """Indices of the valid requests, grouped by identical generation options: each group is
    one padded `generate` call (options are per call, not per row)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if isinstance(item, Prepared):
            groups[item.options_key()].append(index)
    return dict(groups)
