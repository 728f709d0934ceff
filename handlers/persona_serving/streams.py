"""The requests a fleet worker is streaming to, as the handler keeps them between steps.

Kept out of the handler module because TorchServe loads a handler module only when it defines
exactly one class.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from persona_serving.reply_filter import ReplyFilter
from persona_serving.requests import PersonaVersion, Prepared, Routed


@dataclass
class Stream:
    """A request the worker is answering: what its rows need and what its client was shown."""

    id: str
    entry: PersonaVersion
    prompt: Prepared
    input_ids: list[int]
    reply_filter: ReplyFilter  # its version's rules, the fleet's with its persona's
    arrived: float = field(default_factory=time.perf_counter)
    shown: str = ""
    answered: bool = False  # a response (and so a 200 stream head) went out already
    rule: str | None = None  # the reply filter rule its text so far broke (the reply is the fallback)


@dataclass(frozen=True)
class Event:
    """This step's answer to one streaming request: `done` ends its stream."""

    body: str
    done: bool
    status: int = 200
    reason: str = ""


@dataclass(frozen=True)
class Continuing:
    request_id: str


@dataclass(frozen=True)
class New:
    request_id: str
    routed: Routed


def event_line(payload: dict) -> str:
    """One event of a reply stream (ensure_ascii off: Cyrillic stays readable)."""
    return json.dumps(payload, ensure_ascii=False) + "\n"
