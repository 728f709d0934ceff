"""One request of a batch, from TorchServe's raw item to a prompt for one persona version - or to
the reason it is refused.

Kept apart from the handler (and free of torch) so every rule about bad input is plain,
testable code: errors are values, one per request, never exceptions that would fail the batch.
The steps, in the handler's order: `parse` (the body), `route` (which version answers, from the
routing table), then - once that version's adapter is resident - `prepare` (the prompt); an
`about` request is answered by `describe` instead, from the store, with no adapter and no prompt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from personafleet import knowledge
from personafleet.errors import PersonaError, first_error
from personafleet.inference import (
    GenerationLimits, InferenceError, InferenceRequest, PersonaAbout, clamp_generation, without_unused_sampling,
)
from personafleet.knowledge import Knowledge, retrieve
from personafleet.persona import PersonaSpec
from personafleet.prompt import ChatFormatter, render_prompt
from personafleet.routing import RoutingTable, version_dir
from personafleet.store import read_version_info

RUN_REPORT = Path("run") / "report.json"  # written as a training run ends (contract 1's run/, contract 4)


Key = tuple[str, int]  # (persona, version)


@dataclass(frozen=True)
class PersonaVersion:
    """A version resident on a worker: what its prompts are built from (its adapter sits in a slot)."""

    persona: str
    version: int
    spec: PersonaSpec
    folder: Path
    knowledge: Knowledge | None = None  # the facts this version was trained with (issue 14)

    @property
    def key(self) -> tuple[str, int]:
        return self.persona, self.version


@dataclass(frozen=True)
class Routed:
    """A valid request and the version the routing table gives it."""

    request: InferenceRequest
    persona: str
    version: int

    @property
    def key(self) -> tuple[str, int]:
        return self.persona, self.version


@dataclass(frozen=True)
class Prepared:
    """A request ready for `generate`: its prompt, clamped options and the adapter that answers;
    `facts` (retrieved into the prompt; returned when the request shows them) and
    `retrieval_seconds` are also for the handler's metrics."""

    prompt: str
    options: dict[str, Any]
    entry: PersonaVersion
    facts: tuple[str, ...] = ()
    retrieval_seconds: float = 0.0
    show_facts: bool = False


@dataclass(frozen=True)
class Rejected:
    """A request's error value; `persona` and `version` say how far it got (for the metrics' labels)."""

    status: int
    error: str
    detail: str
    persona: str | None = None
    version: int | None = None

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


def parse(item: Any) -> InferenceRequest | Rejected:
    """Validate one raw request body; the fleet needs the persona named."""
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
    if request.persona is None:
        return Rejected(400, "missing_field", "persona: the fleet model needs the persona to answer as")
    return request


def route(request: InferenceRequest, table: RoutingTable) -> Routed | Rejected:
    """The version that answers: the pinned one if the table lists it, else the one the table
    chooses for the request's conversation (the serving one unless a canary shares it)."""
    persona = request.persona or ""
    version = table.resolve(persona, request.version, request.conversation)
    if version is not None:
        return Routed(request, persona, version)
    if persona not in table.personas:
        return Rejected(404, "unknown_persona", f"no persona {persona!r} is served here", persona)
    listed = ", ".join(str(v) for v in table.personas[persona].versions)
    return Rejected(404, "unknown_version", f"{persona} has no version {request.version} being served (listed: {listed})",
                    persona)


def prepare(routed: Routed, entry: PersonaVersion, limits: GenerationLimits, chat: ChatFormatter | None = None) -> Prepared:
    """The prompt training would have built for this version's persona: the shared `render_prompt`,
    with the facts the shared `retrieve` picks from the version's knowledge (and the base's chat
    template, `chat`, for a persona whose template uses it)."""
    spec, request = entry.spec, routed.request
    options = without_unused_sampling(clamp_generation(spec.generation, request.generation, limits))
    turns = request.turns()
    started = time.perf_counter()
    facts = retrieve(entry.knowledge, turns)
    elapsed = time.perf_counter() - started
    return Prepared(render_prompt(spec.template, spec.description, turns, facts, chat), options, entry,
                    facts=tuple(facts), retrieval_seconds=elapsed if entry.knowledge is not None else 0.0,
                    show_facts=request.show_facts)


def describe(routed: Routed, store: Path) -> PersonaAbout | Rejected:
    """The answer to an `about` request: the routed version as published in the store (its base,
    when its run finished, how many facts it knows), read without loading its adapter."""
    folder = version_dir(store, routed.persona, routed.version)
    try:
        info = read_version_info(folder)
        facts = knowledge.count(folder)
    except PersonaError as exc:
        return Rejected(503, "adapter_unavailable", str(exc), *routed.key)
    try:
        trained_at = datetime.fromtimestamp((folder / RUN_REPORT).stat().st_mtime, timezone.utc)
    except OSError:
        trained_at = None  # published from a run that kept no report
    return PersonaAbout(persona=routed.persona, model_version=str(routed.version), base=info.base,
                        trained_at=trained_at, facts=facts)

