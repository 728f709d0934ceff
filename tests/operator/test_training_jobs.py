"""Training Jobs: started on create and on every spec change, superseded, retried, never duplicated.

kopf runs for real against the fake API; no TorchServe is needed until a Job succeeds.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx

from personafleet.routing import read_routing, update_routing
from tests.operator.harness import eventually, persona_model


async def test_create_starts_one_training_job_owned_by_the_resource(cluster, operator):
    created = cluster.apply(persona_model("alice"))

    jobs = await eventually(lambda: cluster.jobs("alice"))
    assert [j["metadata"]["name"] for j in jobs] == ["alice-v1"]
    job = jobs[0]
    labels = job["metadata"]["labels"]
    assert labels["personafleet.io/version"] == "1" and labels["personafleet.io/generation"] == "1"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("PersonaModel", "alice", created["metadata"]["uid"])
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "persona prepare" in script and f"--out {cluster.store}/alice/v1/run" in script
    assert "persona package --run" in script and "--version 1" in script

    status = await eventually(lambda: cluster.status("alice").get("phase") == "Training" and cluster.status("alice"))
    assert status["observedGeneration"] == 1 and status["latestVersion"] == "1"
    assert status["lastTraining"]["jobName"] == "alice-v1"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Trained": "False", "Ready": "False"}
    await eventually(lambda: cluster.events("TrainingStarted"))  # kopf posts Events in the background


async def test_spec_change_supersedes_the_running_job_and_status_changes_do_not_retrain(cluster, operator):
    cluster.apply(persona_model("alice"))
    await eventually(lambda: cluster.jobs("alice"))

    # Status and annotation writes are not spec changes: still one Job.
    cluster.kube.patch("personamodels", "default", "alice", {"metadata": {"annotations": {"note": "hi"}}})
    await asyncio.sleep(0.5)
    assert len(cluster.jobs("alice")) == 1

    cluster.apply(persona_model("alice", training={"loraRank": 16, "maxSteps": 20}))
    jobs = await eventually(lambda: [j["metadata"]["name"] for j in cluster.jobs("alice")] == ["alice-v2"]
                            and cluster.jobs("alice"))
    assert jobs[0]["metadata"]["labels"]["personafleet.io/generation"] == "2"
    assert '"lora_rank": 16' in jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    status = await eventually(lambda: cluster.status("alice").get("observedGeneration") == 2 and cluster.status("alice"))
    assert status["latestVersion"] == "2" and status["phase"] == "Training"
    await eventually(lambda: cluster.events("Superseded"))  # kopf posts Events in the background


async def test_failed_job_is_retried_with_backoff_then_reported_failed(cluster, operator):
    cluster.apply(persona_model("alice"))  # retryLimit 1
    first = (await eventually(lambda: cluster.jobs("alice")))[0]
    cluster.finish_job(first, succeeded=False, message="OOMKilled")

    # The Job is created first, then the status records the retry: wait for both.
    retried = await eventually(lambda: cluster.status("alice").get("retries") == 1
                               and [j for j in cluster.jobs("alice") if j["metadata"]["name"] == "alice-v2"])
    failed = await eventually(lambda: cluster.events("TrainingFailed"))
    assert failed and "OOMKilled" in failed[0]["message"] and "retry 1/1" in failed[0]["message"]

    cluster.finish_job(retried[0], succeeded=False, message="OOMKilled again")
    status = await eventually(lambda: cluster.status("alice").get("phase") == "Failed"
                              and "no retries left" in cluster.status("alice").get("message", "")
                              and cluster.status("alice"))
    trained = next(c for c in status["conditions"] if c["type"] == "Trained")
    assert (trained["status"], trained["reason"]) == ("False", "TrainingFailed")
    assert "OOMKilled again" in status["message"]
    await asyncio.sleep(0.5)
    assert len(cluster.jobs("alice")) == 2  # no third attempt


async def test_restart_mid_training_adopts_the_running_job(cluster, operator):
    cluster.apply(persona_model("alice"))
    await eventually(lambda: cluster.status("alice").get("phase") == "Training")

    await operator.restart()
    await asyncio.sleep(1.0)
    assert [j["metadata"]["name"] for j in cluster.jobs("alice")] == ["alice-v1"]

    # The restarted operator still follows the Job it did not start.
    cluster.finish_job(cluster.jobs("alice")[0], succeeded=False, message="preempted")
    await eventually(lambda: "preempted" in cluster.status("alice").get("message", ""))


async def test_restart_between_job_creation_and_status_write_creates_no_second_job(cluster, operator):
    await operator.stop()
    cluster.apply(persona_model("alice"))
    # What the operator had done before it died: the Job exists, the status does not know it.
    from persona_operator.jobs import training_job
    from persona_operator.spec import PersonaModelSpec

    body = cluster.persona("alice")
    cluster.kube.create("jobs", training_job(body, PersonaModelSpec.parse(body["spec"]), 1, operator.settings), "default")

    await operator.start()
    status = await eventually(lambda: cluster.status("alice").get("phase") == "Training" and cluster.status("alice"))
    assert status["lastTraining"]["jobName"] == "alice-v1"
    assert len(cluster.jobs("alice")) == 1


async def test_invalid_spec_is_reported_without_a_job(cluster, operator):
    # The chart's CRD refuses `..` in exports, but Helm never upgrades crds/: a cluster may run an
    # earlier CRD that lets it through, and the operator must still refuse it.
    crd = cluster.kube.get("customresourcedefinitions", None, "personamodels.personafleet.io")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["dataset"]["properties"]["exports"]["items"]["x-kubernetes-validations"]
    cluster.kube.replace("customresourcedefinitions", None, crd["metadata"]["name"], crd)
    cluster.apply(persona_model("bob", dataset={"exports": ["../secrets/result.json"]}))
    status = await eventually(lambda: cluster.status("bob").get("phase") == "Failed" and cluster.status("bob"))
    assert "spec.dataset.exports" in status["message"] and "not inside the model store" in status["message"]
    assert cluster.jobs("bob") == []


async def test_a_resource_asking_for_more_gpus_than_the_cap_is_refused_without_a_job(cluster, operator):
    cluster.apply(persona_model("greedy", resources={"limits": {"nvidia.com/gpu": 64}}))
    status = await eventually(lambda: cluster.status("greedy").get("phase") == "Failed" and cluster.status("greedy"))
    assert "spec.resources.limits.nvidia.com/gpu: 64 is over this installation's cap of 1" in status["message"]
    assert cluster.jobs("greedy") == []


async def test_delete_removes_the_resource_its_jobs_and_its_routing_entry(cluster, operator):
    update_routing(cluster.store, lambda table: (table.add("alice", 1, serve=True), table.add("bob", 4, serve=True)))
    cluster.apply(persona_model("alice"))
    await eventually(lambda: cluster.jobs("alice"))
    assert "personafleet.io/cleanup" in cluster.persona("alice")["metadata"]["finalizers"]

    cluster.kube.delete("personamodels", "default", "alice")
    await eventually(lambda: not cluster.kube.list("personamodels", "default"))
    assert cluster.jobs("alice") == []  # garbage-collected through ownerReferences
    assert set(read_routing(cluster.store).personas) == {"bob"}


async def test_liveness_endpoint_answers_while_kopf_runs(cluster, operator):
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{operator.settings.health_port}/healthz")
    assert response.status_code == 200 and "now" in response.json()


async def test_trained_version_waits_pending_while_no_serving_pod_is_ready(cluster, operator):
    cluster.apply(persona_model("alice"))
    job = (await eventually(lambda: cluster.jobs("alice")))[0]
    run = cluster.store / "alice" / "v1" / "run"
    run.mkdir(parents=True)
    (run / "report.json").write_text('{"eval": {"after": {"loss": 2.5, "perplexity": 12.2}}}')
    cluster.finish_job(job, succeeded=True)

    status = await eventually(lambda: cluster.status("alice").get("phase") == "Pending" and cluster.status("alice"))
    assert "waits for a ready TorchServe pod" in status["message"] and status.get("retries") == 0
    assert status["lastTraining"]["evalLoss"] == 2.5 and status["lastTraining"]["evalPerplexity"] == 12.2
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Trained"] == ("True", "TrainingSucceeded") and conditions["RolledOut"] == ("False", "NoReplicas")


async def test_a_job_the_api_server_refuses_fails_visibly_and_is_retried(cluster):
    """Issue 11.2: requests above limits in the chart's defaults pass every CRD check, and the Job API
    answers 422 on every attempt. The status, an Event and the retries say so, with the server's words."""
    from persona_operator.settings import TrainingDefaults
    from tests.operator.harness import Operator, operator_settings

    defaults = TrainingDefaults(resources={"requests": {"memory": "48Gi"}, "limits": {"memory": "32Gi"}})
    operator = Operator(operator_settings(cluster, training_defaults=defaults))
    await operator.start()
    try:
        cluster.apply(persona_model("alice"))  # retryLimit 1
        first = await eventually(lambda: cluster.status("alice").get("phase") == "Failed" and cluster.status("alice"))
        assert "must be less than or equal to memory limit of 32Gi" in first["message"]
        assert "422" in first["message"] and first["observedGeneration"] == 1
        trained = next(c for c in first["conditions"] if c["type"] == "Trained")
        assert (trained["status"], trained["reason"]) == ("False", "TrainingFailed")
        warning = await eventually(lambda: cluster.events("TrainingFailed"))
        assert warning[0]["type"] == "Warning" and "memory limit of 32Gi" in warning[0]["message"]

        final = await eventually(lambda: "no retries left" in cluster.status("alice").get("message", "")
                                 and cluster.status("alice"))
        assert final["retries"] == 1 and final["phase"] == "Failed"
        assert cluster.jobs("alice") == []
    finally:
        await operator.stop()


async def test_a_scheduling_field_the_chart_does_not_allow_is_refused_in_the_status(cluster, operator):
    """Issue 15.4: by default a PersonaModel may set its resources, not where its Job runs."""
    cluster.apply(persona_model("bob", nodeSelector={"kubernetes.io/hostname": "control-plane"}))
    status = await eventually(lambda: cluster.status("bob").get("phase") == "Failed" and cluster.status("bob"))
    assert status["message"].startswith("spec.nodeSelector: this installation does not let a PersonaModel set it")
    assert cluster.jobs("bob") == []
    await eventually(lambda: cluster.events("InvalidSpec"))


async def test_the_readme_lists_the_phases_in_the_order_a_new_persona_goes_through_them(cluster, operator):
    """Issue 11.6: a new PersonaModel starts in Training; Pending comes only after training."""
    import re
    from pathlib import Path

    cluster.apply(persona_model("alice"))
    job = (await eventually(lambda: cluster.jobs("alice")))[0]
    run = cluster.store / "alice" / "v1" / "run"
    run.mkdir(parents=True)
    (run / "report.json").write_text('{"eval": {"after": {"loss": 2.5, "perplexity": 12.2}}}')
    cluster.finish_job(job, succeeded=True)
    await eventually(lambda: cluster.status("alice").get("phase") == "Pending")
    observed: list[str] = []
    for _rv, kind, event in cluster.kube.history:
        phase = (event["object"].get("status") or {}).get("phase")
        if kind.plural == "personamodels" and phase and phase not in observed[-1:]:
            observed.append(phase)
    assert observed == ["Training", "RollingOut", "Pending"] or observed == ["Training", "Pending"], observed

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    watch = next(line for line in readme.splitlines() if "get pm -w" in line)
    listed = re.findall(r"[A-Z][A-Za-z]+", watch.split("#", 1)[1].split("(", 1)[0])
    assert listed[0] == observed[0] and "Pending" not in listed[:listed.index("Training") + 1], watch


async def test_the_training_start_is_exported_only_while_the_phase_is_training(cluster, operator):
    """The stuck-training alert's input: time() minus it is how long the current training has run;
    and the training-failure alert's series, at zero from the first pass."""
    from prometheus_client import REGISTRY

    def started() -> float | None:
        return REGISTRY.get_sample_value("persona_operator_training_started_timestamp_seconds", {"persona": "slowpoke"})

    cluster.apply(persona_model("slowpoke", rollout={"keepVersions": 2, "maxEvalLossIncrease": 0.05, "retryLimit": 0}))
    status = await eventually(lambda: cluster.status("slowpoke").get("phase") == "Training" and cluster.status("slowpoke"))
    # The failure alerts' series exist at zero before the first failure (increase() needs a rise).
    assert REGISTRY.get_sample_value("persona_operator_rollouts_total", {"persona": "slowpoke", "outcome": "failed"}) == 0
    assert REGISTRY.get_sample_value("persona_operator_training_duration_seconds_count",
                                     {"persona": "slowpoke", "outcome": "failed"}) == 0
    since = datetime.fromisoformat(status["lastTraining"]["startedAt"]).timestamp()
    assert await eventually(lambda: started() == since)
    cluster.finish_job(cluster.jobs("slowpoke")[0], succeeded=False, message="OOMKilled")
    await eventually(lambda: cluster.status("slowpoke").get("phase") == "Failed")
    await eventually(lambda: started() is None)
