"""Several bases at once: one fleet per base, and which fleet answers a request (issue 22).

A fleet is one TorchServe model holding one base (FRED-T5-large, ruGPT-3, ...) and the adapters
of every persona version published for it. Each published version records its base
(`version.json`), and the routing table records it too when the version is routed (contract 2,
`bases`). Clients keep asking for `POST /predictions/fleet` with the persona in the body and
never name a base: the front of the serving pod (persona_serving.front) reads the persona (and a
pinned version) from the body, resolves the version in the routing table, and forwards the
request to the fleet of that version's base:

- locally (`persona serve --base A --base B`): one TorchServe holds a fleet model per base,
  named `fleet-<base name>`, and the front forwards to the right one;
- in a cluster: each base has its own Deployment (node pool, GPUs, replicas) whose TorchServe
  holds that base as `fleet`; the front forwards a request for another base to that base's
  Service (`persona serve --fleet BASE=URL`), marking it with `FORWARDED_HEADER` so the receiving
  front serves it itself and never forwards it again.

A request whose persona or version the table does not know, or a version without a recorded
base, goes to the first fleet (which answers as one base always did: 404 unknown_persona, ...);
a version whose base no fleet serves is a 503 `base_not_served`. Free of aiohttp and torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_serving.requests import Rejected
from persona_serving.routing_watch import RoutingWatch
from personafleet.inference import FLEET_MODEL
from personafleet.routing import RoutingTable

FORWARDED_HEADER = "X-Persona-Fleet"  # the base a front forwarded a request to: served where it arrives
NAME_CHARS = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Fleet:
    """Where one base's fleet answers: a TorchServe model, on this server or behind another URL."""

    base: str
    model: str = FLEET_MODEL
    url: str | None = None  # another serving Service's inference API; None: this server's TorchServe

    @property
    def local(self) -> bool:
        return self.url is None


def fleet_names(bases: Sequence[str]) -> list[str]:
    """TorchServe model names for the fleets of one server: `fleet` for a single base, else
    `fleet-<the base's last path part>` (`fleet-fred-t5-large`, `fleet-base-causal`), numbered
    where two bases share that part."""
    if len(bases) == 1:
        return [FLEET_MODEL]
    names: list[str] = []
    for base in bases:
        stem = NAME_CHARS.sub("-", base.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")[:40] or "base"
        name, number = f"{FLEET_MODEL}-{stem}", 2
        while name in names:
            name, number = f"{FLEET_MODEL}-{stem}-{number}", number + 1
        names.append(name)
    return names


def request_target(body: bytes) -> tuple[str | None, int | None, str | None]:
    """(persona, pinned version, conversation key) of a contract 3 body; Nones when it has none (the
    fleet that gets it gives the proper 400)."""
    try:
        payload: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None, None, None
    if not isinstance(payload, dict) or not isinstance(payload.get("persona"), str):
        return None, None, None
    version = payload.get("version")
    try:
        pinned = int(str(version).removeprefix("v")) if version is not None else None
    except ValueError:
        pinned = None
    conversation = payload.get("conversation")
    return payload["persona"], pinned, conversation if isinstance(conversation, str) else None


class BaseRouter:
    """The fleet a request goes to, from the store's routing table (re-read when it changes)."""

    def __init__(self, store: Path, fleets: Sequence[Fleet]):
        if not fleets:
            raise ValueError("a router needs at least one fleet")
        self.fleets = list(fleets)
        self.by_base = {fleet.base: fleet for fleet in fleets}
        self.watch = RoutingWatch(store)

    @property
    def default(self) -> Fleet:
        return self.fleets[0]

    def table(self) -> RoutingTable:
        if (table := self.watch.poll()) is not None:
            self.watch.accept(table)
        return self.watch.table

    def route(self, body: bytes) -> Fleet | Rejected:
        persona, pinned, conversation = request_target(body)
        if persona is None:
            return self.default
        table = self.table()
        version = table.resolve(persona, pinned, conversation)  # a canary's version may be on another base
        base = table.base_of(persona, version) if version is not None else None
        if base is None:
            return self.default
        fleet = self.by_base.get(base)
        if fleet is None:
            served = ", ".join(self.by_base)
            return Rejected(503, "base_not_served",
                            f"{persona} v{version} was published for base {base}, which no fleet here serves ({served})")
        return fleet

    def local(self, base: str) -> Fleet | None:
        """This server's fleet of `base` (for a request another front forwarded here)."""
        fleet = self.by_base.get(base)
        return fleet if fleet is not None and fleet.local else None
