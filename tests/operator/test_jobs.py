"""The training Job manifest: contract 4's command, scheduling from the CR or the chart's defaults."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import kubernetes_validate
import pytest

from persona_operator.jobs import RUN_STEP, job_outcome, training_config, training_job
from persona_operator.settings import Settings
from persona_operator.spec import PersonaModelSpec
from persona_training.config import TrainConfig
from personafleet.errors import PersonaError
from tests.operator.harness import persona_model

OWNER = {"apiVersion": "personafleet.io/v1alpha1", "kind": "PersonaModel",
         "metadata": {"name": "alice", "namespace": "bots", "uid": "u-1", "generation": 4}}
DEFAULTS = Settings.from_env({
    "PERSONA_TRAINING_IMAGE": "registry.local/personafleet:1.2.3",
    "PERSONA_STORE_PVC": "store-pvc",
    "PERSONA_DATABASE_SECRET": "bot-db",
    "PERSONA_TRAINING_DEFAULTS": json.dumps({
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }),
})


def build(**spec):
    return training_job(OWNER, PersonaModelSpec.parse(persona_model(**spec)["spec"]), 7, DEFAULTS)


def commands(job) -> list[list[str]]:
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    lines = script.splitlines()
    assert lines[:2] == ["set -eu", RUN_STEP] and all(line.startswith("run persona ") for line in lines[3:])
    return [shlex.split(line)[1:] for line in lines[3:]]


def test_manifest_is_a_valid_job_owned_by_the_persona_model():
    job = build()
    kubernetes_validate.validate(job, "1.33", strict=True)
    meta = job["metadata"]
    assert meta["name"] == "alice-v7" and meta["namespace"] == "bots"
    assert meta["labels"]["personafleet.io/version"] == "7" and meta["labels"]["personafleet.io/generation"] == "4"
    assert meta["ownerReferences"][0]["uid"] == "u-1" and meta["ownerReferences"][0]["controller"] is True
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 86400  # a Job that never schedules fails, visibly
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert pod["containers"][0]["image"] == "registry.local/personafleet:1.2.3"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "store-pvc"


def test_command_follows_contract_4():
    prepare, train, package = commands(build(dataset={"exports": ["exports/a.json", "b.json"],
                                                      "contextTurns": 4, "windowMinutes": 30, "scrub": True}))
    assert prepare == ["persona", "prepare", "/store/exports/a.json", "/store/b.json", "--out", "/work/data",
                       "--persona-id", "user1", "--context-turns", "4", "--window-minutes", "30.0", "--scrub"]
    assert train == ["persona", "train", "--data", "/work/data", "--base", "/store/base/tiny-t5",
                     "--out", "/store/alice/v7/run", "--config", "/work/train.yaml", "--resume"]
    assert package == ["persona", "package", "--run", "/store/alice/v7/run", "--name", "alice",
                       "--version", "7", "--out", "/store/alice/v7", "--workers", "1"]


def test_serving_settings_are_baked_into_the_archive():
    package = commands(build(serving={"workers": 2, "batchSize": 4, "maxBatchDelayMs": 50,
                                      "responseTimeoutSeconds": 90}))[-1]
    assert package[-8:] == ["--workers", "2", "--batch-size", "4", "--max-batch-delay-ms", "50",
                            "--response-timeout", "90"]
    usage = subprocess.run([sys.executable, "-m", "personafleet.cli", "package", "--help"],
                           capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}).stdout
    for flag in ("--run", "--name", "--version", "--out", "--workers", "--batch-size", "--max-batch-delay-ms",
                 "--response-timeout"):
        assert flag in usage  # the Job calls the real CLI with these


def test_feedback_is_exported_and_trained_on_when_asked():
    job = build(dataset={"exports": ["a.json"], "includeFeedback": True})
    steps = commands(job)
    assert steps[1] == ["persona", "export-feedback", "--persona", "alice", "--out", "/work/feedback"]
    assert steps[2][:6] == ["persona", "train", "--data", "/work/data", "--data", "/work/feedback"]
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "bot-db"}}]


def test_scheduling_comes_from_the_chart_defaults_unless_the_resource_says():
    pod = build()["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}  # the API's string form
    pod = build(nodeSelector={"pool": "a100"}, tolerations=[], resources={"limits": {"memory": "8Gi"}})["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["tolerations"] == []
    assert pod["containers"][0]["resources"] == {"limits": {"memory": "8Gi"}}


def test_train_config_is_accepted_by_persona_train():
    spec = PersonaModelSpec.parse(persona_model(
        training={"loraRank": 4, "loraAlpha": 8, "loraDropout": 0.1, "targetModules": ["q", "k"], "learningRate": 1e-3,
                  "epochs": 2, "maxSteps": 30, "batchSize": 2, "gradientAccumulation": 2, "precision": "fp32", "seed": 3},
        serving={"generation": {"maxNewTokens": 40, "temperature": 0.5}})["spec"])
    config = TrainConfig.model_validate(training_config("alice", spec))
    assert (config.lora_rank, config.target_modules, config.precision) == (4, ["q", "k"], "fp32")
    assert config.persona.name == "alice" and config.persona.description == "Отвечаю коротко."
    assert config.persona.generation.max_new_tokens == 40 and config.persona.generation.temperature == 0.5


def test_every_quantity_goes_out_as_the_api_takes_it():
    """YAML's `nvidia.com/gpu: 1` is an integer, which the client's models refuse: one normalisation
    where the Job is built turns every quantity, from the CR or the chart, into its string form."""
    from kubernetes.client import V1Job

    job = build(resources={"requests": {"cpu": 0.5, "memory": "24Gi"}, "limits": {"nvidia.com/gpu": 2, "cpu": 4}})
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "0.5", "memory": "24Gi"}, "limits": {"nvidia.com/gpu": "2", "cpu": "4"}}
    V1Job.model_validate(job)


def test_a_job_the_client_would_refuse_is_a_one_line_error_when_it_is_built():
    with pytest.raises(PersonaError, match=r"^the training Job would be refused: .*resources"):
        build(resources={"limits": {"memory": ["8Gi"]}})


def test_training_pods_get_no_service_account_token():
    assert build()["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("path", ["/store/exports/result.json", "/var/run/secrets/kubernetes.io/token", "a/../../b"])
def test_exports_come_from_the_model_store_only(path):
    with pytest.raises(PersonaError, match=r"spec\.dataset\.exports: .*not inside the model store"):
        build(dataset={"exports": [path]})


@pytest.mark.parametrize(("allowed", "spec", "refused"), [
    (frozenset({"resources"}), {"nodeSelector": {"pool": "a100"}}, "nodeSelector"),
    (frozenset({"resources"}), {"tolerations": []}, "tolerations"),
    (frozenset(), {"resources": {"limits": {"memory": "8Gi"}}}, "resources"),
    (frozenset({"resources", "nodeSelector", "tolerations"}), {"nodeSelector": {"a": "b"}, "tolerations": []}, None),
])
def test_the_chart_decides_which_scheduling_fields_a_resource_may_set(allowed, spec, refused):
    parsed = PersonaModelSpec.parse(persona_model(**spec)["spec"])
    if refused is None:
        parsed.check_scheduling(allowed)
        return
    with pytest.raises(PersonaError, match=rf"^spec\.{refused}: this installation does not let"):
        parsed.check_scheduling(allowed)


def test_by_default_a_resource_may_set_resources_only():
    assert Settings().training_overrides == frozenset({"resources"})
    PersonaModelSpec.parse(persona_model(resources={"limits": {"memory": "8Gi"}})["spec"]).check_scheduling(
        Settings().training_overrides)


def test_invalid_spec_names_the_field():
    with pytest.raises(PersonaError, match=r"spec\.training\.precision"):
        PersonaModelSpec.parse(persona_model(training={"precision": "int3"})["spec"])


@pytest.mark.parametrize(("conditions", "expected"), [
    ([], "running"),
    ([{"type": "Complete", "status": "True"}], "succeeded"),
    ([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow"}], "failed"),
    ([{"type": "Failed", "status": "False"}], "running"),
])
def test_job_outcome(conditions, expected):
    outcome, why = job_outcome({"status": {"conditions": conditions}})
    assert outcome == expected
    assert ("DeadlineExceeded: too slow" in why) == (expected == "failed")


def test_sigterm_reaches_the_step_in_flight_and_its_exit_status_is_kept(tmp_path):
    """The pod's shell is PID 1: without forwarding, a preempted `persona train` never checkpoints."""
    marker = tmp_path / "checkpointed"
    step = (f"import signal, sys, time, pathlib\n"
            f"def stop(*_): pathlib.Path({str(marker)!r}).write_text('yes'); sys.exit(143)\n"
            f"signal.signal(signal.SIGTERM, stop)\n"
            f"print('ready', flush=True)\n"
            f"time.sleep(60)\n")
    script = f"set -eu\n{RUN_STEP}\nrun {shlex.quote(sys.executable)} -c {shlex.quote(step)}\necho never"
    shell = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert shell.stdout.readline().strip() == "ready"
    shell.terminate()  # SIGTERM to the shell only, as the kubelet does to PID 1
    output, _ = shell.communicate(timeout=30)
    assert marker.read_text() == "yes" and shell.returncode == 143 and "never" not in output

    quick = subprocess.run(["sh", "-c", f"set -eu\n{RUN_STEP}\nrun sh -c 'exit 3'\necho never"],
                           capture_output=True, text=True, timeout=30)
    assert quick.returncode == 3 and "never" not in quick.stdout  # a failed step still stops the Job


def test_a_reply_cap_above_the_default_is_baked_into_the_archive():
    package = commands(build(serving={"generation": {"maxNewTokens": 256}}))[-1]
    assert package[package.index("--max-new-tokens") + 1] == "256"
    assert "--max-new-tokens" not in commands(build(serving={"generation": {"maxNewTokens": 64}}))[-1]


def test_the_archive_cap_follows_the_crd_cap(tmp_path):
    """Issue 15.4: the highest maxNewTokens the CRD lets through is the highest `persona package` takes."""
    from personafleet.inference import MAX_NEW_TOKENS

    package = commands(build(serving={"generation": {"maxNewTokens": MAX_NEW_TOKENS}}))[-1]
    assert package[package.index("--max-new-tokens") + 1] == str(MAX_NEW_TOKENS)
    refused = subprocess.run([sys.executable, "-m", "personafleet.cli", "package", "--run", str(tmp_path), "--name", "a",
                              "--version", "1", "--out", str(tmp_path), "--max-new-tokens", str(MAX_NEW_TOKENS + 1)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--max-new-tokens" in refused.stderr
