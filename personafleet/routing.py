"""The fleet's routing table: which version of each persona answers (contract 2).

One small JSON file at the top of the model store, `STORE/routing.json`:

    {"personas": {"devops-dude": {"serving": 2, "versions": [1, 2], "bases": {"1": "B", "2": "B"}}}}

`serving` answers requests that name no version; `versions` are the versions a request may pin
(always including `serving`): the operator adds a new version there, smoke-tests it pinned, then
switches `serving`, then prunes `versions` to `keepVersions`. The files of a version stay in the
store (`STORE/<persona>/v<N>/`) whether or not the table lists it.

A canary (issue 23) gives a route optional `weights` (`{"4": 90, "5": 10}`: listed versions and
their shares of the conversations). `choose_version` picks one per conversation key with a stable
hash, so a conversation stays on its version; requests without a key, and every request of a route
without weights, get `serving`. Making a version the serving one ends a canary (weights cleared).

`bases` (optional, issue 22) records the base model each listed version was published for (its
`version.json`), set when the version is routed: with several bases served, it is how a request
reaches the fleet of its version's base (persona_serving.bases). A table without it stays valid;
a version without a recorded base is answered by the first fleet, as when one base served all.

Writers (the operator, `persona switch`) change it under an exclusive lock and replace it with one
atomic rename; readers (every serving worker) never see half a file. Version naming is one rule
everywhere: a version is a positive integer N, written without leading zeros; its folder is `vN`.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from personafleet.errors import PersonaError, first_error
from personafleet.files import write_text_atomic
from personafleet.names import PERSONA_NAME_PATTERN, parse_version

ROUTING_FILE = "routing.json"
LOCK_FILE = ".routing.lock"


def version_dir(store: Path, persona: str, version: int) -> Path:
    """`STORE/<persona>/v<N>/` (contract 1)."""
    return store / persona / f"v{version}"


class PersonaRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serving: int = Field(ge=1, description="the version answering requests that pin none")
    versions: list[int] = Field(description="versions a request may pin, oldest first; includes `serving`")
    weights: dict[int, int] | None = Field(
        None, description="a canary: listed versions and their shares of the conversations (absent: `serving` answers)")
    bases: dict[int, str] = Field(
        default_factory=dict, exclude_if=lambda bases: not bases,  # a table without bases is written as before
        description="the base model each listed version was published for (optional)")

    @model_validator(mode="after")
    def _serving_is_listed(self) -> PersonaRoute:
        self.versions = sorted(set(self.versions) | {self.serving})
        if any(v < 1 for v in self.versions):
            raise ValueError("versions are positive integers")
        self.bases = {v: base for v, base in sorted(self.bases.items()) if v in self.versions and base}
        if self.weights is not None:
            unlisted = sorted(set(self.weights) - set(self.versions))
            if unlisted:
                raise ValueError(f"weights name versions the route does not list: {unlisted}")
            if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
                raise ValueError("weights are non-negative and not all 0")
        return self


def conversation_key(*parts: object) -> str:
    """An opaque conversation key for sticky routing (contract 3's `conversation`): a hash of what
    identifies a conversation (a chat id and the persona), so no raw id travels to serving."""
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=12).hexdigest()


def choose_version(route: PersonaRoute, session_key: str | None) -> int:
    """The version answering an unpinned request of conversation `session_key`.

    Without weights or a key: `serving`. Otherwise a stable hash of the key is a point in [0, 1)
    that falls in one version's share, newest version first: a conversation keeps its version
    while the weights stay, and when a canary's weight grows its conversations stay on it (only
    conversations of older versions move, each at most once)."""
    if not route.weights or session_key is None:
        return route.serving
    digest = hashlib.blake2b(session_key.encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64 * sum(route.weights.values())
    for version in sorted(route.weights, reverse=True):
        point -= route.weights[version]
        if point < 0:
            return version
    return route.serving  # rounding at the very top of the range


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    personas: dict[str, PersonaRoute] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_are_persona_names(self) -> RoutingTable:
        for name in self.personas:
            if not re.fullmatch(PERSONA_NAME_PATTERN, name):
                raise ValueError(f"persona name {name!r} must match {PERSONA_NAME_PATTERN}")
        return self

    def resolve(self, persona: str, version: int | None = None, conversation: str | None = None) -> int | None:
        """The version that answers `persona` (pinned, or chosen for the conversation), or None when
        it is not routed."""
        route = self.personas.get(persona)
        if route is None:
            return None
        if version is None:
            return choose_version(route, conversation)
        return version if version in route.versions else None

    def base_of(self, persona: str, version: int) -> str | None:
        """The base `version` of `persona` was published for, when the table records it."""
        route = self.personas.get(persona)
        return route.bases.get(version) if route is not None else None

    def add(self, persona: str, version: int, *, serve: bool, base: str | None = None) -> None:
        """List `version` for pinned requests; with `serve`, make it the answering version too (for
        every conversation: a canary's weights end); `base` records the base model it was published
        for (kept from before when not given)."""
        route = self.personas.get(persona)
        recorded = {version: base} if base else {}
        if route is None:
            self.personas[persona] = PersonaRoute(serving=version, versions=[version], bases=recorded)
            return
        self.personas[persona] = PersonaRoute(
            serving=version if serve else route.serving, versions=[*route.versions, version],
            bases=route.bases | recorded,
            weights=None if serve else route.weights,
        )

    def weigh(self, persona: str, weights: dict[int, int]) -> None:
        """Share the persona's conversations among listed versions by weight (a canary: `{4: 90, 5: 10}`);
        `serving` stays what keyless requests get. All weight on `serving` is no canary: cleared."""
        route = self.personas[persona]
        shares = {v: w for v, w in sorted(weights.items()) if w != 0}
        self.personas[persona] = PersonaRoute(serving=route.serving, versions=route.versions, bases=route.bases,
                                              weights=None if set(shares) <= {route.serving} else shares)

    def withdraw(self, persona: str, version: int) -> None:
        """Unlist a version that is not serving (a failed rollout or canary): its conversations go
        back to `serving`."""
        route = self.personas.get(persona)
        if route is not None and version != route.serving:
            route.versions = [v for v in route.versions if v != version]
            route.weights = None
            route.bases.pop(version, None)

    def prune(self, persona: str, keep: int) -> list[int]:
        """Keep the newest `keep` versions (never dropping `serving` or a weighted one); returns the
        versions dropped."""
        route = self.personas.get(persona)
        if route is None:
            return []
        kept = set(sorted(route.versions, reverse=True)[: max(keep, 1)]) | {route.serving} | set(route.weights or ())
        dropped = [v for v in route.versions if v not in kept]
        route.versions = sorted(kept)
        route.bases = {v: base for v, base in route.bases.items() if v in kept}
        return dropped

    def remove(self, persona: str) -> None:
        self.personas.pop(persona, None)


def parse_routing(text: str | bytes, source: str = ROUTING_FILE) -> RoutingTable:
    try:
        return RoutingTable.model_validate_json(text)
    except ValidationError as exc:
        raise PersonaError(f"{source} is not a valid routing table ({first_error(exc, 'table')})") from None


def read_routing(store: Path) -> RoutingTable:
    """The store's table; an empty one when there is none yet."""
    path = store / ROUTING_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return RoutingTable()
    except OSError as exc:
        raise PersonaError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_routing(text, str(path))


@contextmanager
def _locked(store: Path) -> Iterator[None]:
    store.mkdir(parents=True, exist_ok=True)
    with open(store / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_routing(store: Path, table: RoutingTable) -> None:
    """Replace the table in one rename (readers see the old file or the new one, never a mix)."""
    # Optional fields are left out when unset: a table without a canary reads as before (contract 2).
    write_text_atomic(store / ROUTING_FILE, table.model_dump_json(indent=2, exclude_none=True))


def update_routing(store: Path, change: Callable[[RoutingTable], None]) -> RoutingTable:
    """Read, change and write the table under the store's lock (the operator and `persona switch`
    may write at the same time); returns the table as written."""
    with _locked(store):
        table = read_routing(store)
        change(table)
        write_routing(store, table)
        return table
