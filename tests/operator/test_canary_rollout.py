"""Canary rollouts judged by the people talking to the persona (issue 23), end to end: the operator
(kopf against the fake API server) splits a persona's conversations between two versions through
the routing table of a real fleet TorchServe; simulated users talk to it through the real bot (the
fake Bot API, a real Postgres) and press 👍/👎; a real Prometheus scrapes the bot's and serving's
metrics, and the operator's analysis queries it over HTTP. One canary is liked (promoted), one is
disliked (rolled back).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from persona_serving.server import endpoints, free_port
from personafleet.routing import read_routing, update_routing
from tests.bot.fake_telegram import BOT_TOKEN, FakeTelegram
from tests.fixtures.bot import Users, bot_running
from tests.operator.harness import Operator, eventually, fake_cluster, fleet_replica, fleet_server, persona_model
from tests.operator.test_rollout import ROLLOUT_TIMEOUT, route, settings_for, train_version

pytestmark = pytest.mark.slow

CANARY = {"steps": [50], "minStepSeconds": 4,
          "analysis": {"intervalSeconds": 1, "timeoutSeconds": 60, "minRatings": 6, "minRequests": 6,
                       "minLikeRatio": 0.6, "maxErrorRate": 0.2}}


@pytest.fixture(scope="module")
def fleet(tiny_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("canary-fleet")
    with fleet_server(work / "store", tiny_base, work / "serve") as server:
        yield server


@contextlib.asynccontextmanager
async def canary_world(tmp_path, fleet, prometheus, postgres_database, persona: str) -> AsyncIterator[tuple]:
    """The cluster with one serving replica, the operator (analysis against `prometheus`), the bot talking
    to the replica, and Prometheus scraping the bot and the fleet."""
    telegram = FakeTelegram()
    await telegram.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(telegram.stop)
        cluster = await stack.enter_async_context(fake_cluster(tmp_path, store=fleet.model_store))
        replica = await stack.enter_async_context(fleet_replica(fleet, tmp_path / "replica-0"))
        cluster.add_serving_pod("torchserve-0")
        operator = Operator(settings_for(cluster, replica, prometheus_url=prometheus.url))
        await operator.start()
        stack.push_async_callback(operator.stop)
        bot = await stack.enter_async_context(bot_running({
            "BOT_TOKEN": BOT_TOKEN, "DATABASE_URL": postgres_database, "TELEGRAM_API_URL": telegram.url,
            "INFERENCE_URL": replica.inference_url,
            "INFERENCE_TOKEN_FILE": str(tmp_path / "replica-0" / "inference-token"),  # the front's bot token
            "INFERENCE_TIMEOUT": "60", "PERSONA": persona, "PERSONAS": persona, "METRICS_PORT": "0",
            "RATE_LIMIT_MESSAGES": "1000", "MAX_REPLY_TOKENS": "8", "VOICE": "false",
        }))
        serving_metrics = endpoints(fleet)["metrics"].removeprefix("http://").removesuffix("/metrics")
        prometheus.scrape({"bot": [f"127.0.0.1:{bot.metrics_port}"], "serving": [serving_metrics]})
        yield cluster, telegram


def stage(cluster, persona: str) -> Callable[[], str]:
    """The phase, and during a canary its step: "Canary 1/1" (the weights), "Canary 2/1" (promoting)."""
    def now() -> str:
        status = cluster.status(persona)
        canary = status.get("canary") or {}
        return f"Canary {canary['step']}/{canary['steps']}" if status.get("phase") == "Canary" else status.get("phase", "")
    return now


async def start_canary(cluster, tiny_run, persona: str, **analysis) -> None:
    """Version 1 serves (a first version has nothing to be compared with: it rolls out at once); an
    edit trains version 2, which starts as a canary at 50 %."""
    canary = {**CANARY, "analysis": {**CANARY["analysis"], **analysis}}
    spec = {"rollout": {"keepVersions": 2, "retryLimit": 0, "strategy": "Canary", "canary": canary}}
    cluster.apply(persona_model(persona, **spec))
    await train_version(cluster, tiny_run, persona, 1, loss=2.0)
    await eventually(lambda: cluster.status(persona).get("servingVersion") == "1", timeout=ROLLOUT_TIMEOUT)
    cluster.apply(persona_model(persona, training={"loraRank": 4, "maxSteps": 20}, **spec))
    await train_version(cluster, tiny_run, persona, 2, loss=1.9)
    status = await eventually(lambda: cluster.status(persona).get("phase") == "Canary" and cluster.status(persona),
                              timeout=ROLLOUT_TIMEOUT)
    assert status["canary"]["weight"] == 50 and status["canary"]["step"] == 1
    assert status["canary"]["weights"] == [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]
    found = route(cluster, persona)
    assert found == (1, [1, 2])


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


async def test_a_liked_canary_is_promoted_to_every_conversation(tmp_path, fleet, prometheus, postgres_database, tiny_run):
    persona = "pm-liked"
    async with canary_world(tmp_path, fleet, prometheus, postgres_database, persona) as (cluster, telegram):
        await start_canary(cluster, tiny_run, persona)
        users = Users(telegram, postgres_database, likes=lambda version: True, stage=stage(cluster, persona),
                      chats=12)  # at 50 % about half of them talk to the canary
        await users.keep_talking(until=lambda: cluster.status(persona).get("phase") != "Canary")
        status = await eventually(lambda: cluster.status(persona).get("phase") == "Ready" and cluster.status(persona),
                                  timeout=ROLLOUT_TIMEOUT)
        await users.keep_talking(until=lambda: False, rounds=1)
        events = {e["reason"] for e in await eventually(lambda: cluster.events("RolledOut") and cluster.events())}

    assert status["servingVersion"] == "2" and condition(status, "Canary")["reason"] == "Promoted"
    analysis = status["canary"]["analysis"]
    assert analysis["ratings"] >= 6 and analysis["likeRatio"] == 1.0 and analysis["requests"] >= 6
    assert route(cluster, persona) == (2, [1, 2])  # no weights: v2 answers everyone, v1 stays pinnable
    assert {"CanaryStarted", "CanaryAdvanced", "RolledOut"} <= events
    # Sticky: during the canary step every conversation stayed with one version; both versions had some.
    during = {chat: versions for chat, versions in users.versions("Canary 1/1").items() if versions}
    assert all(len(set(versions)) == 1 for versions in during.values()), during
    assert {versions[0] for versions in during.values()} == {"1", "2"}
    assert {versions[-1] for versions in users.versions().values()} == {"2"}  # after the promotion


async def test_a_disliked_canary_is_rolled_back_with_an_event_and_a_condition(tmp_path, fleet, prometheus,
                                                                            postgres_database, tiny_run):
    persona = "pm-disliked"
    async with canary_world(tmp_path, fleet, prometheus, postgres_database, persona) as (cluster, telegram):
        await start_canary(cluster, tiny_run, persona)
        users = Users(telegram, postgres_database, likes=lambda version: version == "1",  # they prefer the old one
                      stage=stage(cluster, persona), chats=12)
        await users.keep_talking(until=lambda: cluster.status(persona).get("phase") != "Canary")
        status = await eventually(lambda: cluster.status(persona).get("phase") == "Failed" and cluster.status(persona),
                                  timeout=ROLLOUT_TIMEOUT)
        rolled_back = await eventually(lambda: cluster.events("CanaryRolledBack"))
        await users.keep_talking(until=lambda: False, rounds=1)

    assert status["servingVersion"] == "1" and status["canary"]["weight"] == 0
    assert status["canary"]["weights"] == [{"version": "1", "weight": 100}, {"version": "2", "weight": 0}]
    assert condition(status, "Canary")["status"] == "False" and condition(status, "Canary")["reason"] == "AnalysisFailed"
    assert condition(status, "RolledOut")["reason"] == "CanaryRolledBack" and condition(status, "Ready")["status"] == "True"
    assert "rolled back at step 1/1" in status["message"] and "below 0.6" in status["message"]
    assert rolled_back[0]["type"] == "Warning" and "version 1 answers every conversation" in rolled_back[0]["message"]
    assert route(cluster, persona) == (1, [1])  # the canary is unlisted
    assert {versions[-1] for versions in users.versions().values()} == {"1"}  # everyone is back on version 1


@contextlib.asynccontextmanager
async def cluster_without_prometheus(tmp_path, fleet) -> AsyncIterator[tuple]:
    """The cluster, one serving replica and the operator, whose Prometheus URL answers nothing."""
    async with fake_cluster(tmp_path, store=fleet.model_store) as cluster, \
            fleet_replica(fleet, tmp_path / "replica-0") as replica:
        cluster.add_serving_pod("torchserve-0")
        operator = Operator(settings_for(cluster, replica, prometheus_url=f"http://127.0.0.1:{free_port()}"))
        await operator.start()
        try:
            yield cluster, operator
        finally:
            await operator.stop()


async def test_without_prometheus_a_restarted_operator_resumes_the_step_then_rolls_back_never_promotes(
        tmp_path, fleet, tiny_run):
    persona = "pm-blind"
    async with cluster_without_prometheus(tmp_path, fleet) as (cluster, operator):
        await start_canary(cluster, tiny_run, persona, timeoutSeconds=10)
        waiting = await eventually(lambda: condition(cluster.status(persona), "Canary")["reason"] == "MetricsUnavailable"
                                   and cluster.status(persona))
        assert condition(waiting, "Canary")["status"] == "Unknown" and "unreachable" in waiting["message"]

        # Killed mid-canary, the table edited meanwhile: the restarted operator resumes the same step
        # (the status' clock) and puts the step's weights back.
        await operator.stop()
        update_routing(cluster.store, lambda table: table.add(persona, 1, serve=True))
        assert read_routing(cluster.store).personas[persona].weights is None
        await operator.start()
        await eventually(lambda: read_routing(cluster.store).personas[persona].weights == {1: 50, 2: 50})
        resumed = cluster.status(persona)
        assert resumed["phase"] == "Canary" and resumed["canary"]["stepStartedAt"] == waiting["canary"]["stepStartedAt"]

        status = await eventually(lambda: cluster.status(persona).get("phase") == "Failed" and cluster.status(persona),
                                  timeout=30)
    assert condition(status, "Canary")["reason"] == "AnalysisTimedOut" and status["servingVersion"] == "1"
    assert "no judgment within 14 s of step 1" in status["message"]
    assert route(cluster, persona) == (1, [1])


async def test_a_spec_edit_during_a_canary_supersedes_it(tmp_path, fleet, tiny_run):
    persona = "pm-edited"
    async with cluster_without_prometheus(tmp_path, fleet) as (cluster, _):
        await start_canary(cluster, tiny_run, persona)
        cluster.apply(persona_model(persona, training={"loraRank": 2, "maxSteps": 20},
                                    rollout={"strategy": "Canary", "canary": CANARY}))
        await eventually(lambda: [j for j in cluster.jobs(persona) if j["metadata"]["name"] == f"{persona}-v3"])
        status = await eventually(lambda: cluster.status(persona).get("phase") == "Training" and cluster.status(persona))
        superseded = await eventually(lambda: cluster.events("Superseded"))
    assert route(cluster, persona) == (1, [1])  # the canary is withdrawn before the new generation trains
    assert status["servingVersion"] == "1" and status["canary"]["weight"] == 0
    assert condition(status, "Canary")["reason"] == "Superseded"
    assert "canary of version 2 rolled back: the spec changed" in superseded[0]["message"]
