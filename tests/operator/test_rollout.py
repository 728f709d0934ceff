"""Rollouts through the fleet's routing table, end to end: kopf against the fake API server, serving
replicas that are the real fleet TorchServe (one per module, on its own model store) behind the
production auth front (`fleet_replica`): serve, switch under load, prune, refuse, withdraw, resume
after a restart, correct drift, clean up. Tests marked `faults` get a proxy before the front for
the two faults a real server cannot be asked for (a replica that stops following the table, a
stalled pinned request).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client import REGISTRY

from personafleet.routing import RoutingTable, read_routing, update_routing, write_routing
from tests.operator.harness import (
    Operator,
    eventually,
    fake_cluster,
    fleet_replica,
    fleet_server,
    operator_settings,
    persona_model,
    place_version,
)

ROLLOUT_TIMEOUT = 60.0  # a real TorchServe on a loaded 2-core machine: cold adapter loads included

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tiny_base, tmp_path_factory):
    """ONE real fleet TorchServe for the module, over a model store of its own (each test's personas
    have their own names; the operators of earlier tests are gone)."""
    work = tmp_path_factory.mktemp("operator-fleet")
    with fleet_server(work / "store", tiny_base, work / "serve") as server:
        yield server


@pytest.fixture
async def cluster(tmp_path, fleet):
    """The fake API server of this test; its model store is the fleet's."""
    async with fake_cluster(tmp_path, store=fleet.model_store) as running:
        yield running


@pytest.fixture
async def replica(request, cluster, fleet, tmp_path):
    """Serving pod `torchserve-0` at 127.0.0.1: the auth front before the fleet (with a fault proxy
    before it for tests marked `faults`)."""
    faults = request.node.get_closest_marker("faults") is not None
    async with fleet_replica(fleet, tmp_path / "replica-0", faults=faults) as running:
        cluster.add_serving_pod("torchserve-0")
        yield running


def settings_for(cluster, replica, **overrides):
    return operator_settings(cluster, serving_inference_port=replica.port, serving_token_file=replica.token_file,
                             verify_timeout_seconds=2.0, rollout_timeout_seconds=ROLLOUT_TIMEOUT, **overrides)


@pytest.fixture
async def serving_operator(cluster, replica):
    """The operator with one serving replica."""
    running = Operator(settings_for(cluster, replica))
    await running.start()
    yield running
    await running.stop()


async def ask(replica, persona: str, version: int | None = None) -> tuple[int, dict]:
    """One contract 3 request, as the bot sends it: (HTTP status, body)."""
    body = {"persona": persona, "message": "привет"} | ({"version": version} if version else {})
    async with httpx.AsyncClient(base_url=replica.inference_url) as http:
        response = await http.post(f"/predictions/{replica.model}", json=body,
                                   headers={"Authorization": f"Bearer {replica.token_file.read_text().strip()}"})
    return response.status_code, response.json()


async def answers_as(replica, persona: str, version: int | None = None) -> str:
    status, body = await ask(replica, persona, version)
    return body["model_version"] if status == 200 else body["error"]


def route(cluster, persona: str) -> tuple[int, list[int]] | None:
    found = read_routing(cluster.store).personas.get(persona)
    return (found.serving, found.versions) if found else None


async def train_version(cluster, tiny_run, persona: str, version: int, loss: float, **place) -> None:
    """Play the Job controller for `persona-v<version>`: the version into the store, then success."""
    job = await eventually(lambda: [j for j in cluster.jobs(persona) if j["metadata"]["name"] == f"{persona}-v{version}"])
    place_version(cluster.store, tiny_run, persona, version, loss, **place)
    cluster.finish_job(job[0], succeeded=True)


async def serve_first_version(cluster, tiny_run, persona: str, **spec) -> dict:
    cluster.apply(persona_model(persona, **spec))
    await train_version(cluster, tiny_run, persona, 1, loss=2.0)
    return await eventually(lambda: cluster.status(persona).get("phase") == "Ready" and cluster.status(persona),
                            timeout=ROLLOUT_TIMEOUT)


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_v1_serves_v2_switches_under_load_v3_prunes_and_delete_unroutes(cluster, serving_operator, replica,
                                                                             tiny_run):
    status = await serve_first_version(cluster, tiny_run, "pm-life")
    assert status["servingVersion"] == "1" and status["latestVersion"] == "1" and status["observedGeneration"] == 1
    assert status["servingFacts"] == 0  # trained without knowledge (issue 14)
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Trained": "True", "RolledOut": "True", "Ready": "True"}
    assert route(cluster, "pm-life") == (1, [1])
    assert await answers_as(replica, "pm-life") == "1"
    assert metric("persona_operator_rollout_step_seconds_count", step="smoke_test") >= 1

    # Unpinned traffic while version 2 is added, smoke-tested, switched to and verified.
    answers: list[str] = []
    stop = asyncio.Event()

    async def client_loop():
        while not stop.is_set():
            answers.append(await answers_as(replica, "pm-life"))
            await asyncio.sleep(0.005)

    load = [asyncio.create_task(client_loop()) for _ in range(3)]
    cluster.apply(persona_model("pm-life", training={"loraRank": 4, "maxSteps": 20}))
    await train_version(cluster, tiny_run, "pm-life", 2, loss=1.9)
    status = await eventually(lambda: cluster.status("pm-life").get("servingVersion") == "2" and cluster.status("pm-life"),
                              timeout=ROLLOUT_TIMEOUT)
    await eventually(lambda: answers[-3:] == ["2", "2", "2"])
    stop.set()
    await asyncio.gather(*load)
    assert set(answers) == {"1", "2"}  # no request failed
    assert status["phase"] == "Ready" and status["observedGeneration"] == 2
    assert route(cluster, "pm-life") == (2, [1, 2])  # keepVersions 2: v1 stays pinnable
    assert await answers_as(replica, "pm-life", 1) == "1"
    await eventually(lambda: cluster.events("RolledOut"))  # kopf posts Events in the background

    cluster.apply(persona_model("pm-life", training={"loraRank": 2, "maxSteps": 20}))
    await train_version(cluster, tiny_run, "pm-life", 3, loss=1.8)
    await eventually(lambda: cluster.status("pm-life").get("servingVersion") == "3", timeout=ROLLOUT_TIMEOUT)
    assert route(cluster, "pm-life") == (3, [2, 3])
    assert await answers_as(replica, "pm-life", 1) == "unknown_version"
    assert (cluster.store / "pm-life" / "v1" / "version.json").is_file()  # pruned from the table, not the store
    await eventually(lambda: any("no longer pinnable: v1" in e["message"] for e in cluster.events("RolledOut")))
    assert metric("persona_operator_rollouts_total", persona="pm-life", outcome="succeeded") == 3
    assert metric("persona_operator_time_to_serving_seconds_count", persona="pm-life") == 3
    assert metric("persona_operator_rollout_step_seconds_count", step="verify") >= 3

    cluster.kube.delete("personamodels", "default", "pm-life")
    await eventually(lambda: not cluster.kube.list("personamodels", "default"), timeout=30)
    assert route(cluster, "pm-life") is None
    assert await answers_as(replica, "pm-life") == "unknown_persona"
    assert cluster.jobs("pm-life") == []


async def test_a_failed_smoke_test_leaves_the_table_alone_and_the_retry_rolls_out(cluster, replica, tiny_run):
    running = Operator(settings_for(cluster, replica, retry_backoff_seconds=3.0))
    await running.start()
    try:
        await serve_first_version(cluster, tiny_run, "pm-smoke", rollout={"retryLimit": 1})
        before = (cluster.store / "routing.json").read_text()

        # A published version whose adapter is missing: the replica cannot load it (503).
        cluster.apply(persona_model("pm-smoke", training={"loraRank": 4}, rollout={"retryLimit": 1}))
        job = await eventually(lambda: [j for j in cluster.jobs("pm-smoke") if j["metadata"]["name"] == "pm-smoke-v2"])
        adapter = place_version(cluster.store, tiny_run, "pm-smoke", 2, loss=1.9) / "adapter" / "adapter_config.json"
        config = adapter.read_bytes()
        adapter.unlink()
        cluster.finish_job(job[0], succeeded=True)

        status = await eventually(lambda: cluster.status("pm-smoke").get("phase") == "Failed" and cluster.status("pm-smoke"),
                                  timeout=ROLLOUT_TIMEOUT, interval=0.01)
        assert "smoke test failed on torchserve-0" in status["message"] and "adapter_unavailable" in status["message"]
        assert "retry 1/1" in status["message"] and status["servingVersion"] == "1"
        assert route(cluster, "pm-smoke") == (1, [1])  # withdrawn: as before the rollout
        assert json.loads((cluster.store / "routing.json").read_text()) == json.loads(before)
        assert await answers_as(replica, "pm-smoke") == "1"
        assert metric("persona_operator_rollout_step_failures_total", persona="pm-smoke", step="smoke_test") == 1

        adapter.write_bytes(config)  # fixed before the back-off ends: the retry rolls version 2 out
        status = await eventually(lambda: cluster.status("pm-smoke").get("servingVersion") == "2" and cluster.status("pm-smoke"),
                                  timeout=ROLLOUT_TIMEOUT)
        assert status["phase"] == "Ready" and status["retries"] == 0
        assert route(cluster, "pm-smoke") == (2, [1, 2]) and await answers_as(replica, "pm-smoke") == "2"
    finally:
        await running.stop()


@pytest.mark.faults
async def test_a_replica_that_keeps_answering_the_old_version_fails_verify_and_v1_serves_again(
        cluster, serving_operator, replica, tiny_run):
    await serve_first_version(cluster, tiny_run, "pm-verify", rollout={"retryLimit": 0})
    cluster.apply(persona_model("pm-verify", training={"loraRank": 4}, rollout={"retryLimit": 0}))
    job = await eventually(lambda: [j for j in cluster.jobs("pm-verify") if j["metadata"]["name"] == "pm-verify-v2"])
    place_version(cluster.store, tiny_run, "pm-verify", 2, loss=1.9)
    replica.hold.clear()
    cluster.finish_job(job[0], succeeded=True)
    await eventually(lambda: ("pm-verify", 2) in replica.pinned, timeout=ROLLOUT_TIMEOUT)
    replica.frozen = True  # it has seen version 2 listed (the smoke test passes) and will not notice the switch
    replica.hold.set()
    status = await eventually(lambda: cluster.status("pm-verify").get("phase") == "Failed" and cluster.status("pm-verify"),
                              timeout=ROLLOUT_TIMEOUT)
    assert "verify failed on torchserve-0: still answers as version 1" in status["message"]
    assert status["servingVersion"] == "1" and "version 1 keeps serving" in status["message"]
    assert route(cluster, "pm-verify") == (1, [1])
    replica.frozen = False
    assert await answers_as(replica, "pm-verify") == "1"


async def test_failed_job_gate_rejection_unpublished_version_and_unreachable_replica_keep_v1_serving(
        cluster, serving_operator, replica, tiny_run):
    await serve_first_version(cluster, tiny_run, "pm-fail", rollout={"retryLimit": 0, "maxEvalLossIncrease": 0.05})

    cluster.apply(persona_model("pm-fail", training={"loraRank": 4}, rollout={"retryLimit": 0}))
    job = await eventually(lambda: [j for j in cluster.jobs("pm-fail") if j["metadata"]["name"] == "pm-fail-v2"])
    cluster.finish_job(job[0], succeeded=False, message="the training container exited with 1")
    status = await eventually(lambda: cluster.status("pm-fail").get("phase") == "Failed" and cluster.status("pm-fail"))
    assert "exited with 1" in status["message"] and status["servingVersion"] == "1"

    cluster.apply(persona_model("pm-fail", training={"loraRank": 8}, rollout={"retryLimit": 0}))
    await train_version(cluster, tiny_run, "pm-fail", 3, loss=2.5)  # 25 % worse than v1's 2.0
    status = await eventually(lambda: cluster.status("pm-fail").get("lastTraining", {}).get("evalLoss") == 2.5
                              and cluster.status("pm-fail").get("phase") == "Failed" and cluster.status("pm-fail"))
    rolled_out = next(c for c in status["conditions"] if c["type"] == "RolledOut")
    assert rolled_out["reason"] == "GateRejected" and "2.5000" in rolled_out["message"]
    assert route(cluster, "pm-fail") == (1, [1])
    await eventually(lambda: cluster.events("GateRejected"))  # kopf posts Events in the background

    # A Job that succeeded without publishing (no version.json): refused before the table changes.
    cluster.apply(persona_model("pm-fail", training={"loraRank": 6}, rollout={"retryLimit": 0}))
    await train_version(cluster, tiny_run, "pm-fail", 4, loss=1.9, publish=False)
    status = await eventually(lambda: cluster.status("pm-fail").get("latestVersion") == "4"
                              and cluster.status("pm-fail").get("phase") == "Failed" and cluster.status("pm-fail"))
    assert "publish check failed on the model store" in status["message"] and "no version.json" in status["message"]
    assert route(cluster, "pm-fail") == (1, [1])

    # Every replica or none: a second, unreachable replica fails the rollout for the first one too.
    cluster.add_serving_pod("torchserve-1", ip="127.0.0.2")
    cluster.apply(persona_model("pm-fail", training={"loraRank": 2}, rollout={"retryLimit": 0}))
    await train_version(cluster, tiny_run, "pm-fail", 5, loss=1.9)
    status = await eventually(lambda: cluster.status("pm-fail").get("latestVersion") == "5"
                              and cluster.status("pm-fail").get("phase") == "Failed" and cluster.status("pm-fail"),
                              timeout=ROLLOUT_TIMEOUT)
    assert "smoke test failed on torchserve-1" in status["message"] and status["servingVersion"] == "1"
    assert route(cluster, "pm-fail") == (1, [1]) and await answers_as(replica, "pm-fail") == "1"
    assert metric("persona_operator_rollouts_total", persona="pm-fail", outcome="failed") == 2
    assert metric("persona_operator_rollouts_total", persona="pm-fail", outcome="rejected") == 1


async def test_first_version_failing_its_smoke_test_leaves_nothing_routed(cluster, serving_operator, replica, tiny_run):
    cluster.apply(persona_model("pm-first", rollout={"retryLimit": 0}))
    job = await eventually(lambda: cluster.jobs("pm-first"))
    (place_version(cluster.store, tiny_run, "pm-first", 1, loss=2.0) / "adapter" / "adapter_config.json").unlink()
    cluster.finish_job(job[0], succeeded=True)
    status = await eventually(lambda: cluster.status("pm-first").get("phase") == "Failed" and cluster.status("pm-first"),
                              timeout=ROLLOUT_TIMEOUT)
    assert "smoke test failed" in status["message"] and "no version serves" in status["message"]
    assert not status.get("servingVersion")
    assert route(cluster, "pm-first") is None
    assert await answers_as(replica, "pm-first") == "unknown_persona"


@pytest.mark.faults
async def test_restart_mid_rollout_finishes_the_rollout_without_a_new_job(cluster, serving_operator, replica, tiny_run):
    await serve_first_version(cluster, tiny_run, "pm-restart")
    cluster.apply(persona_model("pm-restart", training={"loraRank": 4}))
    replica.hold.clear()  # the smoke test of version 2 stalls, as a slow adapter load would
    await train_version(cluster, tiny_run, "pm-restart", 2, loss=1.9)

    # The operator dies while the replica loads version 2, and comes back.
    await eventually(lambda: ("pm-restart", 2) in replica.pinned, timeout=ROLLOUT_TIMEOUT)
    assert cluster.status("pm-restart")["phase"] == "RollingOut" and route(cluster, "pm-restart") == (1, [1, 2])
    await serving_operator.restart()
    replica.hold.set()

    status = await eventually(lambda: cluster.status("pm-restart").get("servingVersion") == "2"
                              and cluster.status("pm-restart"), timeout=ROLLOUT_TIMEOUT)
    assert status["phase"] == "Ready"
    assert sorted(j["metadata"]["name"] for j in cluster.jobs("pm-restart")) == ["pm-restart-v1", "pm-restart-v2"]
    assert route(cluster, "pm-restart") == (2, [1, 2]) and await answers_as(replica, "pm-restart") == "2"


async def test_a_ready_persona_puts_an_edited_table_back_and_reports_a_drifted_replica(
        cluster, serving_operator, replica, fleet, tiny_run, tmp_path):
    await serve_first_version(cluster, tiny_run, "pm-drift")
    cluster.apply(persona_model("pm-drift", training={"loraRank": 4}))
    await train_version(cluster, tiny_run, "pm-drift", 2, loss=1.9)
    await eventually(lambda: cluster.status("pm-drift").get("servingVersion") == "2", timeout=ROLLOUT_TIMEOUT)

    def wake() -> None:  # any event of the persona's Jobs wakes its reconcile pass
        job = cluster.jobs("pm-drift")[0]
        cluster.kube.patch("jobs", "default", job["metadata"]["name"], {"metadata": {"annotations": {"touched": str(len(cluster.events()))}}})

    # A person switches the table back by hand: the next pass puts version 2 back.
    update_routing(cluster.store, lambda table: table.add("pm-drift", 1, serve=True))
    assert await answers_as(replica, "pm-drift") == "1"  # the real workers noticed the hand edit
    wake()
    await eventually(lambda: cluster.events("Resynced"), timeout=ROLLOUT_TIMEOUT)
    assert route(cluster, "pm-drift") == (2, [1, 2]) and await answers_as(replica, "pm-drift") == "2"
    assert "it routed pm-drift to version 1" in cluster.events("Resynced")[0]["message"]

    # A second replica that stopped noticing routing changes while it still routed version 1: reported
    # (its proxy pins its unpinned requests to the version it last saw serving; v1 is still listed).
    async with fleet_replica(fleet, tmp_path / "replica-1", host="127.0.0.2", port=replica.port,
                             token_file=replica.token_file, faults=True) as stale:
        stale.frozen, stale.table = True, RoutingTable.model_validate({"personas": {"pm-drift": {"serving": 1, "versions": [1]}}})
        cluster.add_serving_pod("torchserve-1", ip="127.0.0.2")
        wake()
        drift = await eventually(lambda: [e for e in cluster.events("ReplicaDrift") if "torchserve-1" in e["message"]],
                                 timeout=ROLLOUT_TIMEOUT)
        assert drift[0]["type"] == "Warning" and "torchserve-1 answers as version 1" in drift[0]["message"]
        assert "torchserve-0" not in drift[0]["message"]
        assert metric("persona_operator_drifted_replicas", persona="pm-drift") == 1
    cluster.kube.delete("pods", "default", "torchserve-1")
    assert cluster.status("pm-drift")["phase"] == "Ready" and route(cluster, "pm-drift") == (2, [1, 2])

    # A table restored from a backup that predates the persona: put back as well.
    write_routing(cluster.store, RoutingTable())
    wake()
    await eventually(lambda: route(cluster, "pm-drift") == (2, [2]), timeout=ROLLOUT_TIMEOUT)
    assert metric("persona_operator_routing_corrections_total", persona="pm-drift") == 2
    assert await answers_as(replica, "pm-drift") == "2" and cluster.status("pm-drift")["phase"] == "Ready"
