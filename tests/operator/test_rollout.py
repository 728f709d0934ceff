"""Rollouts against a real TorchServe with the tiny model: serve, replace under load, refuse, roll
back, resume after a restart, clean up.

One TorchServe for the session (the `torchserve` fixture); each test uses its own persona name,
so the models it registers never meet another test's.
"""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from personafleet.client import InferenceClient
from personafleet.inference import InferenceRequest
from persona_serving.management import ManagementClient
from persona_operator.rollout import model_url
from tests.operator.harness import Operator, eventually, operator_settings, persona_model, place_version, serving_replica

pytestmark = pytest.mark.slow

ROLLOUT_TIMEOUT = 90.0


def relabel_persona(mar: Path, persona: str) -> None:
    """Corrupt an archive the way only a smoke test notices: it loads, but serves another persona."""
    with zipfile.ZipFile(mar) as source:
        entries = {info.filename: source.read(info) for info in source.infolist()}
    spec = json.loads(entries["persona.json"])
    entries["persona.json"] = json.dumps({**spec, "name": persona}).encode()
    with zipfile.ZipFile(mar, "w") as target:
        for name, data in entries.items():
            target.writestr(name, data)


@pytest.fixture
async def replica(torchserve, tmp_path):
    """The session's TorchServe behind the production auth front: what a serving pod is."""
    async with serving_replica(torchserve, tmp_path / "front") as running:
        yield running


@pytest.fixture
async def serving_operator(cluster, replica):
    """The operator with one serving replica, a Ready pod at 127.0.0.1."""
    cluster.store = replica.model_store
    cluster.add_serving_pod("torchserve-0")
    running = Operator(operator_settings(
        cluster,
        store_path=replica.model_store,
        serving_management_port=replica.management_port,
        serving_inference_port=replica.inference_port,
        serving_token_file=replica.token_file,
        rollout_timeout_seconds=ROLLOUT_TIMEOUT,
    ))
    await running.start()
    yield running
    await running.stop()


async def versions(torchserve, persona: str) -> set[str]:
    """What TorchServe itself has registered for `persona` (asked directly, with its own key)."""
    async with ManagementClient(torchserve.management_url, token_file=torchserve.key_file) as management:
        return {d["modelVersion"] for d in await management.describe(persona)}


async def ask(torchserve, persona: str, version: str | None = None) -> str:
    """The version that answers an unversioned (or versioned) request."""
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        return (await client.reply(persona, InferenceRequest(message="привет"), version=version)).model_version


async def train_version(cluster, tiny_run, persona: str, version: int, loss: float) -> None:
    """Play the Job controller for `persona-v<version>`: artifacts into the store, then success."""
    job = await eventually(lambda: [j for j in cluster.jobs(persona) if j["metadata"]["name"] == f"{persona}-v{version}"])
    place_version(cluster.store, tiny_run, persona, version, loss)
    cluster.finish_job(job[0], succeeded=True)


async def serve_first_version(cluster, tiny_run, persona: str, **spec) -> dict:
    cluster.apply(persona_model(persona, **spec))
    await train_version(cluster, tiny_run, persona, 1, loss=2.0)
    return await eventually(lambda: cluster.status(persona).get("phase") == "Ready" and cluster.status(persona),
                            timeout=ROLLOUT_TIMEOUT)


async def test_create_serves_v1_then_an_edit_rolls_out_v2_under_load_and_delete_cleans_up(
        cluster, serving_operator, replica, torchserve, tiny_run):
    status = await serve_first_version(cluster, tiny_run, "pm-life")
    assert status["servingVersion"] == "1" and status["latestVersion"] == "1" and status["observedGeneration"] == 1
    assert status["servingFacts"] == 0  # trained without knowledge (issue 14)
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Trained": "True", "RolledOut": "True", "Ready": "True"}
    assert status["lastTraining"]["evalLoss"] == 2.0 and status["lastTraining"]["durationSeconds"] >= 0
    assert await ask(torchserve, "pm-life") == "1"
    models = json.loads(cluster.kube.get("configmaps", "default", "personafleet-models")["data"]["models.json"])
    assert models["pm-life"] == {"version": "1", "url": "pm-life/v1/pm-life.mar"}

    # Concurrent unversioned traffic while version 2 is registered, smoke-tested and made default.
    answers: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def client_loop():
        inference = f"http://127.0.0.1:{replica.inference_port}"  # through the front, like the bot
        async with InferenceClient(inference, token_file=replica.inference_token_file, retries=0) as client:
            while not stop.is_set():
                try:
                    answers.append((await client.reply("pm-life", InferenceRequest(message="как дела?"))).model_version)
                except Exception as exc:  # noqa: BLE001 - every failure is a test failure
                    failures.append(exc)

    load = [asyncio.create_task(client_loop()) for _ in range(3)]
    cluster.apply(persona_model("pm-life", training={"loraRank": 4, "maxSteps": 20}))
    await train_version(cluster, tiny_run, "pm-life", 2, loss=1.9)
    status = await eventually(lambda: cluster.status("pm-life").get("servingVersion") == "2" and cluster.status("pm-life"),
                              timeout=ROLLOUT_TIMEOUT)
    await eventually(lambda: answers[-3:] == ["2", "2", "2"])
    stop.set()
    await asyncio.gather(*load)
    assert failures == [], failures[:3]
    assert "1" in answers and "2" in answers
    assert status["phase"] == "Ready" and status["observedGeneration"] == 2
    assert await versions(torchserve, "pm-life") == {"1", "2"}  # keepVersions 2
    assert json.loads(cluster.kube.get("configmaps", "default", "personafleet-models")["data"]["models.json"])[
        "pm-life"]["version"] == "2"
    await eventually(lambda: cluster.events("RolledOut"))  # kopf posts Events in the background
    assert REGISTRY.get_sample_value("persona_operator_rollouts_total", {"persona": "pm-life", "outcome": "succeeded"}) == 2
    assert REGISTRY.get_sample_value("persona_operator_time_to_serving_seconds_count", {"persona": "pm-life"}) == 2

    cluster.kube.delete("personamodels", "default", "pm-life")
    await eventually(lambda: not cluster.kube.list("personamodels", "default"), timeout=30)
    async with ManagementClient(torchserve.management_url, token_file=torchserve.key_file) as management:
        assert "pm-life" not in {m["modelName"] for m in await management.list_models()}
    assert cluster.jobs("pm-life") == []
    assert "pm-life" not in cluster.kube.get("configmaps", "default", "personafleet-models")["data"]["models.json"]


async def test_failed_job_gate_rejection_and_an_unreachable_replica_leave_v1_serving(cluster, serving_operator, torchserve, tiny_run):
    await serve_first_version(cluster, tiny_run, "pm-fail", rollout={"retryLimit": 0, "maxEvalLossIncrease": 0.05})

    cluster.apply(persona_model("pm-fail", training={"loraRank": 4}, rollout={"retryLimit": 0}))
    job = await eventually(lambda: [j for j in cluster.jobs("pm-fail") if j["metadata"]["name"] == "pm-fail-v2"])
    cluster.finish_job(job[0], succeeded=False, message="the training container exited with 1")
    status = await eventually(lambda: cluster.status("pm-fail").get("phase") == "Failed" and cluster.status("pm-fail"))
    assert "exited with 1" in status["message"] and status["servingVersion"] == "1"
    assert await ask(torchserve, "pm-fail") == "1"

    cluster.apply(persona_model("pm-fail", training={"loraRank": 8}, rollout={"retryLimit": 0}))
    await train_version(cluster, tiny_run, "pm-fail", 3, loss=2.5)  # 25 % worse than v1's 2.0
    status = await eventually(lambda: cluster.status("pm-fail").get("lastTraining", {}).get("evalLoss") == 2.5
                              and cluster.status("pm-fail").get("phase") == "Failed" and cluster.status("pm-fail"))
    rolled_out = next(c for c in status["conditions"] if c["type"] == "RolledOut")
    assert rolled_out["reason"] == "GateRejected" and "2.5000" in rolled_out["message"]
    assert await versions(torchserve, "pm-fail") == {"1"}
    await eventually(lambda: cluster.events("GateRejected"))  # kopf posts Events in the background

    # Every replica or none: a second, unreachable replica fails the rollout on the first one too.
    cluster.add_serving_pod("torchserve-1", ip="127.0.0.2")
    cluster.apply(persona_model("pm-fail", training={"loraRank": 2}, rollout={"retryLimit": 0}))
    await train_version(cluster, tiny_run, "pm-fail", 4, loss=1.9)
    status = await eventually(lambda: cluster.status("pm-fail").get("latestVersion") == "4"
                              and cluster.status("pm-fail").get("phase") == "Failed" and cluster.status("pm-fail"),
                              timeout=ROLLOUT_TIMEOUT)
    assert "register failed on torchserve-1" in status["message"] and status["servingVersion"] == "1"
    assert await versions(torchserve, "pm-fail") == {"1"} and await ask(torchserve, "pm-fail") == "1"
    assert REGISTRY.get_sample_value("persona_operator_rollouts_total", {"persona": "pm-fail", "outcome": "failed"}) == 1


async def test_smoke_test_failure_rolls_back(cluster, serving_operator, torchserve, tiny_run):
    await serve_first_version(cluster, tiny_run, "pm-smoke", rollout={"retryLimit": 0})

    cluster.apply(persona_model("pm-smoke", training={"loraRank": 4}, rollout={"retryLimit": 0}))
    job = await eventually(lambda: [j for j in cluster.jobs("pm-smoke") if j["metadata"]["name"] == "pm-smoke-v2"])
    relabel_persona(place_version(cluster.store, tiny_run, "pm-smoke", 2, loss=1.9), "someone-else")
    cluster.finish_job(job[0], succeeded=True)

    status = await eventually(lambda: cluster.status("pm-smoke").get("phase") == "Failed" and cluster.status("pm-smoke"),
                              timeout=ROLLOUT_TIMEOUT)
    assert "smoke test failed" in status["message"] and "someone-else" in status["message"]
    assert status["servingVersion"] == "1"
    assert await versions(torchserve, "pm-smoke") == {"1"}  # version 2 was withdrawn
    assert await ask(torchserve, "pm-smoke") == "1"


async def test_restart_mid_rollout_finishes_the_rollout_without_a_new_job(cluster, serving_operator, torchserve, tiny_run):
    await serve_first_version(cluster, tiny_run, "pm-restart")
    cluster.apply(persona_model("pm-restart", training={"loraRank": 4}))
    await train_version(cluster, tiny_run, "pm-restart", 2, loss=1.9)

    # The operator dies while it registers version 2, and comes back.
    await eventually(lambda: cluster.status("pm-restart").get("phase") == "RollingOut", interval=0.01)
    await serving_operator.restart()

    status = await eventually(lambda: cluster.status("pm-restart").get("servingVersion") == "2"
                              and cluster.status("pm-restart"), timeout=ROLLOUT_TIMEOUT)
    assert status["phase"] == "Ready"
    assert sorted(j["metadata"]["name"] for j in cluster.jobs("pm-restart")) == ["pm-restart-v1", "pm-restart-v2"]
    assert await ask(torchserve, "pm-restart") == "2"
    assert await versions(torchserve, "pm-restart") == {"1", "2"}


async def test_a_ready_persona_puts_a_drifted_replica_and_models_json_back(cluster, serving_operator, replica,
                                                                           torchserve, tiny_run):
    """A pod that started from an older models.json, or a version switched by hand: the next pass
    makes the serving version the default again, and models.json name it again."""
    await serve_first_version(cluster, tiny_run, "pm-drift")
    place_version(cluster.store, tiny_run, "pm-drift", 2, loss=1.9)
    management_url = f"http://127.0.0.1:{replica.management_port}"
    async with ManagementClient(management_url, token_file=replica.token_file) as management:
        await management.register(model_url("pm-drift", 2), initial_workers=1, synchronous=True)
        await management.set_default("pm-drift", "2")
    stale = json.dumps({"pm-drift": {"version": "2", "url": model_url("pm-drift", 2)}})
    cluster.kube.patch("configmaps", "default", "personafleet-models", {"data": {"models.json": stale}})
    assert await ask(torchserve, "pm-drift") == "2"

    job = cluster.jobs("pm-drift")[0]  # any event of the persona's Jobs wakes its reconcile pass
    cluster.kube.patch("jobs", "default", job["metadata"]["name"], {"metadata": {"annotations": {"touched": "1"}}})
    await eventually(lambda: cluster.events("Resynced"), timeout=ROLLOUT_TIMEOUT)
    assert await ask(torchserve, "pm-drift") == "1"
    models = json.loads(cluster.kube.get("configmaps", "default", "personafleet-models")["data"]["models.json"])
    assert models["pm-drift"]["version"] == "1"
    assert cluster.status("pm-drift")["phase"] == "Ready"
