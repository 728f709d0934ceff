"""Rolling a persona version out through the fleet's routing table (contract 2), and back when anything fails.

Every serving replica reads `STORE/routing.json` (a stat per batch) and hot-loads adapters from the
store, so a rollout is table writes plus inference requests; no TorchServe management call:

    add N to `versions`  -> unpinned traffic still answered by the serving version
    smoke test           -> on every ready replica a request pinned to N (it loads the adapter)
    switch `serving` = N -> workers notice within about a second
    verify               -> every replica answers unpinned requests as N (polled briefly)
    prune `versions`     -> the newest keepVersions stay pinnable; files stay on the store

A failure at any step withdraws N (the previous serving version answers again, N is unlisted), so
no replica is left on a half-rolled-out version. Each step is idempotent: a rollout interrupted by
an operator restart is simply run again.

A canary (issue 23) stops after the smoke test: `weigh` gives N a share of the conversations
instead of `serving`, and each replica is asked, with a conversation key the new weights send to
N (and the old ones did not), until it answers as N. Later steps change the weights the same way;
the promotion is the rollout's own switch, verify and prune.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from personafleet.client import TokenSource, error_detail, send_authorized
from personafleet.errors import PersonaError
from personafleet.inference import InferenceError, final_event
from personafleet.names import parse_version
from personafleet.routing import PersonaRoute, RoutingTable, choose_version, conversation_key, read_routing, update_routing
from personafleet.store import published_version

from persona_operator import metrics
from persona_operator.settings import Settings

SMOKE_MESSAGE = "Привет! Как дела?"
CHECK_TOKENS = 8  # a smoke test proves the adapter loads and generates; a long reply proves nothing more
VERIFY_INTERVAL_SECONDS = 0.2  # between unpinned requests while waiting for a replica to switch
CHECK_KEYS = 10_000  # conversation keys tried for one that the new weights send to the canary


@dataclass(frozen=True)
class Replica:
    """One serving pod, addressed directly (not through the Service) so each one is checked."""

    pod: str
    inference_url: str

    @classmethod
    def from_pod(cls, pod: dict[str, Any], settings: Settings) -> Replica:
        ip = pod["status"]["podIP"]
        host = f"[{ip}]" if ":" in ip else ip
        return cls(pod=pod["metadata"]["name"], inference_url=f"http://{host}:{settings.serving_inference_port}")


Step = tuple[str, Callable[[], Awaitable[Any]]]  # a rollout step's name (its metric label) and its work


class ReplicaFailure(Exception):
    """One replica did not answer as asked."""

    def __init__(self, replica: str, detail: str):
        super().__init__(f"{replica}: {detail}")
        self.replica, self.detail = replica, detail


class RolloutFailed(Exception):
    """A rollout step failed (on a replica, or in the model store); the new version has been withdrawn."""

    def __init__(self, step: str, where: str, detail: str):
        super().__init__(f"{step} failed on {where}: {detail}")
        self.step, self.where, self.detail = step, where, detail


def metric_step(step: str) -> str:
    """A step's name as a metric label value ("smoke test" -> "smoke_test")."""
    return step.replace(" ", "_")


def check_key(before: PersonaRoute | None, after: PersonaRoute, version: int) -> str:
    """A conversation key that `after` sends to `version` and, where one exists, `before` did not: a
    replica answering it as `version` has taken the new weights into force."""
    chosen = None
    for key in (conversation_key("operator-check", i) for i in range(CHECK_KEYS)):
        if choose_version(after, key) == version:
            if before is None or choose_version(before, key) != version:
                return key
            chosen = chosen or key
    if chosen is None:
        raise PersonaError(f"no conversation goes to version {version} with weights {after.weights}")
    return chosen


def route_of(table: RoutingTable, persona: str, version: int, previous: int, weights: dict[int, int]) -> PersonaRoute:
    """`table`'s route for `persona` as a canary step has it: `previous` serving, `version` listed,
    the conversations shared by `weights` (a table edited meanwhile gets exactly that back)."""
    if persona not in table.personas or table.personas[persona].serving != previous:
        table.add(persona, previous, serve=True)
    table.add(persona, version, serve=False)
    table.weigh(persona, weights)
    return table.personas[persona]


def withdraw_version(table: RoutingTable, persona: str, version: int, previous: int | None) -> None:
    """Undo a rollout of `version` in `table`: `previous` serves again (or, with no previous version,
    the persona leaves the table) and `version` is no longer pinnable."""
    route = table.personas.get(persona)
    if route is None or previous == version:
        return
    if route.serving == version:
        if previous is None:
            table.remove(persona)
            return
        table.add(persona, previous, serve=True)
    table.withdraw(persona, version)


class Rollout:
    """The routing-table writes and the inference requests of one operator."""

    def __init__(self, settings: Settings, logger: logging.Logger | None = None):
        self.store = Path(settings.store_path)
        self.model = settings.serving_model
        self.tokens = TokenSource(token_file=settings.serving_token_file, kind="inference")
        self.timeout = settings.rollout_timeout_seconds
        self.verify_timeout = settings.verify_timeout_seconds
        self.logger = logger or logging.getLogger(__name__)

    # ---- the routing table (blocking file lock: off the event loop) ------------------------
    async def route(self, change: Callable[[RoutingTable], None]) -> RoutingTable:
        return await asyncio.to_thread(update_routing, self.store, change)

    async def table(self) -> RoutingTable:
        return await asyncio.to_thread(read_routing, self.store)

    # ---- rollout ---------------------------------------------------------------------------
    async def roll_out(self, persona: str, version: int, replicas: Sequence[Replica], *, smoke_test: bool,
                       previous: int | None, keep: int) -> list[int]:
        """Make `version` answer `persona` on every replica, or on none of them; returns the versions pruned
        from the table. `previous` is the version that served before (it serves again on a failure)."""
        base = self.check_published(persona, version)  # recorded with the version: its requests reach its base's fleet
        async with self._http() as http:
            steps = self._listed(http, persona, version, replicas, smoke_test=smoke_test, base=base)
            steps += [("switch", lambda: self.route(lambda table: table.add(persona, version, serve=True))),
                      ("verify", lambda: self._everywhere(replicas, lambda r: self._verify(http, r, persona, version)))]
            await self._run(persona, version, previous, steps)
        dropped: list[int] = []
        try:
            with metrics.ROLLOUT_STEP_SECONDS.labels("prune").time():
                await self.route(lambda table: dropped.extend(table.prune(persona, keep)))
        except (PersonaError, OSError) as exc:  # housekeeping: the next rollout prunes again
            self.logger.warning("Could not prune old versions of %s from the routing table: %s", persona, exc)
        return dropped

    async def start_canary(self, persona: str, version: int, replicas: Sequence[Replica], *, smoke_test: bool,
                           previous: int, weights: dict[int, int]) -> None:
        """List `version`, smoke-test it, then give it its first share of the conversations on every
        replica; on any failure `previous` answers everything again."""
        base = self.check_published(persona, version)
        async with self._http() as http:
            steps = self._listed(http, persona, version, replicas, smoke_test=smoke_test, base=base)
            await self._run(persona, version, previous, [*steps, self._weigh(http, persona, version, previous, weights,
                                                                            replicas)])

    async def follow(self, persona: str, version: int, replicas: Sequence[Replica], *, previous: int,
                     weights: dict[int, int]) -> bool:
        """Make the table share `persona` as a canary step says (`weights`), and check that every replica
        follows; nothing is written when the table says so already. True when it had to be written.
        A replica that does not follow fails the canary: `previous` answers everything again."""
        table = await self.table()
        if table.personas.get(persona) == route_of(table.model_copy(deep=True), persona, version, previous, weights):
            return False
        async with self._http() as http:
            await self._run(persona, version, previous, [self._weigh(http, persona, version, previous, weights, replicas)])
        return True

    def _listed(self, http: httpx.AsyncClient, persona: str, version: int, replicas: Sequence[Replica], *,
                smoke_test: bool, base: str) -> list[Step]:
        """The first steps of every rollout: list the version (pinnable, with the base it was published
        for: its requests reach its base's fleet), then smoke-test it pinned."""
        steps: list[Step] = [("route", lambda: self.route(lambda table: table.add(persona, version, serve=False,
                                                                                   base=base)))]
        if smoke_test:
            steps.append(("smoke test", lambda: self._everywhere(
                replicas, lambda r: self._smoke_test(http, r, persona, version))))
        return steps

    def _weigh(self, http: httpx.AsyncClient, persona: str, version: int, previous: int, weights: dict[int, int],
               replicas: Sequence[Replica]) -> Step:
        """The step that writes a canary's weights and waits until each replica answers a conversation
        the new weights send to the canary as the canary."""
        async def weigh() -> None:
            before: list[PersonaRoute | None] = []

            def change(table: RoutingTable) -> None:
                before.append(table.personas[persona].model_copy() if persona in table.personas else None)
                route_of(table, persona, version, previous, weights)

            after = (await self.route(change)).personas[persona]
            key = check_key(before[0], after, version)
            await self._everywhere(replicas, lambda r: self._verify(http, r, persona, version, key))
        return "weigh", weigh

    async def _run(self, persona: str, version: int, previous: int | None, steps: Sequence[Step]) -> None:
        """Run rollout steps in order, each timed; the first failure withdraws `version` and is raised
        as `RolloutFailed` naming the step."""
        for step, work in steps:
            try:
                with metrics.ROLLOUT_STEP_SECONDS.labels(metric_step(step)).time():
                    await work()
            except ReplicaFailure as failure:
                await self.withdraw(persona, version, previous)
                raise RolloutFailed(step, failure.replica, failure.detail) from failure
            except (PersonaError, OSError) as exc:  # the table itself is unreadable or unwritable
                await self.withdraw(persona, version, previous)
                raise RolloutFailed(step, "the routing table", str(exc)) from exc

    async def restore(self, persona: str, version: int) -> int | None:
        """Make the table route `persona` to `version` again where it does not (edited by hand, restored
        from a backup), with its base recorded (a version rolled out before bases were recorded gets
        it); returns the version it routed to before (0: none), None when it was right."""
        route = (await self.table()).personas.get(persona)
        if route is not None and route.serving == version and version in route.bases and not route.weights:
            return None  # no write: every worker would re-read an unchanged table
        try:
            base = self.check_published(persona, version)
        except RolloutFailed:
            base = None  # put back all the same: the version serves (the store's own trouble shows elsewhere)
        if route is not None and route.serving == version and base is None:
            return None
        before: list[int] = []

        def put_back(table: RoutingTable) -> None:
            found = table.personas.get(persona)
            before.append(found.serving if found else 0)
            table.add(persona, version, serve=True, base=base)

        await self.route(put_back)
        return before[0] if before[0] != version else None

    def check_published(self, persona: str, version: int) -> str:
        """The version is published (`personafleet.store.published_version`: complete, inside the store,
        its record naming it), so no replica is sent to load half a version; a Job that succeeded
        without publishing fails here, before the table changes. Returns the base it was published for."""
        try:
            return published_version(self.store, persona, version).base
        except (PersonaError, OSError) as exc:
            raise RolloutFailed("publish check", "the model store", str(exc)) from None

    async def withdraw(self, persona: str, version: int, previous: int | None) -> None:
        """Take `version` out of the table, `previous` serving again; logged, never raised (the caller
        is already reporting a failure)."""
        try:
            await self.route(lambda table: withdraw_version(table, persona, version, previous))
        except (PersonaError, OSError) as exc:
            self.logger.error("Could not withdraw %s v%s from the routing table: %s", persona, version, exc)

    @staticmethod
    async def _everywhere(replicas: Sequence[Replica], step: Callable[[Replica], Awaitable[None]]) -> None:
        """Run `step` on every replica at once; all are waited for, then the first failure is raised."""
        outcomes = await asyncio.gather(*(step(r) for r in replicas), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _smoke_test(self, http: httpx.AsyncClient, replica: Replica, persona: str, version: int) -> None:
        answered = await self.ask(http, replica, persona, version)
        if answered != version:
            raise ReplicaFailure(replica.pod, f"a request pinned to version {version} was answered by version {answered}")
        self.logger.info("Smoke test of %s v%s passed on %s", persona, version, replica.pod)

    async def _verify(self, http: httpx.AsyncClient, replica: Replica, persona: str, version: int,
                      conversation: str | None = None) -> None:
        """Unpinned requests (of `conversation`, if given) until the replica answers as `version` (its
        workers noticed the switch or the new weights)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.verify_timeout
        while True:
            answered = await self.ask(http, replica, persona, None, conversation)
            if answered == version:
                return
            if loop.time() > deadline:
                raise ReplicaFailure(replica.pod, f"still answers as version {answered} {self.verify_timeout:g} s "
                                                  f"after the routing table {'sent the conversation' if conversation else 'switched'} "
                                                  f"to {version}")
            await asyncio.sleep(VERIFY_INTERVAL_SECONDS)

    async def answers(self, persona: str, replicas: Sequence[Replica]) -> dict[str, int | str]:
        """Which version each replica answers unpinned requests with (or why it did not answer)."""
        async def one(http: httpx.AsyncClient, replica: Replica) -> int | str:
            try:
                return await self.ask(http, replica, persona, None)
            except ReplicaFailure as failure:
                return failure.detail
        async with self._http() as http:
            found = await asyncio.gather(*(one(http, r) for r in replicas))
        return {r.pod: v for r, v in zip(replicas, found, strict=True)}

    def _http(self) -> httpx.AsyncClient:
        """One connection pool per rollout or check (a client per request would rebuild its TLS context
        every time: measurable under load)."""
        return httpx.AsyncClient(timeout=self.timeout)

    async def ask(self, http: httpx.AsyncClient, replica: Replica, persona: str, version: int | None,
                  conversation: str | None = None) -> int:
        """One contract 3 request to the fleet model; the version that answered it."""
        body: dict[str, Any] = {"persona": persona, "message": SMOKE_MESSAGE,
                                "generation": {"max_new_tokens": CHECK_TOKENS}}
        if version is not None:
            body["version"] = version
        if conversation is not None:
            body["conversation"] = conversation
        try:
            response = await send_authorized(http, self.tokens, "POST", f"{replica.inference_url}/predictions/{self.model}",
                                             json=body)
        except httpx.HTTPError as exc:
            raise ReplicaFailure(replica.pod, f"{exc.__class__.__name__}: {exc}".rstrip(": ")) from exc
        if response.status_code != 200:
            error, detail = error_detail(response)
            raise ReplicaFailure(replica.pod, f"HTTP {response.status_code} {error}: {detail}")
        try:
            answer = final_event(response.content)  # the reply streams: its final event says who answered
            if isinstance(answer, InferenceError):
                raise ReplicaFailure(replica.pod, f"{answer.error}: {answer.detail}")
            answered_persona, answered = answer.persona, parse_version(answer.model_version)
        except (ValueError, PersonaError) as exc:
            raise ReplicaFailure(replica.pod, f"not a contract 3 answer ({exc}): {response.text[:200]}") from exc
        if answered_persona != persona:
            raise ReplicaFailure(replica.pod, f"answered as persona {answered_persona!r}, not {persona!r}")
        return answered
