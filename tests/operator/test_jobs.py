"""The training Job manifest: contract 4's command, scheduling from the CR or the chart's defaults."""

from __future__ import annotations

import json
import os
import shlex
import shutil
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
                       "--version", "7", "--out", "/store/alice/v7"]


def test_every_step_parses_with_the_real_cli():
    """Every command line of the Job is one the real `persona` CLI takes (a removed flag fails here)."""
    from tests.charts.test_render import parse_cli

    steps = commands(build(dataset={"exports": ["a.json"], "contextTurns": 2, "windowMinutes": 5, "scrub": True,
                                    "includeFeedback": True},
                           serving={"generation": {"maxNewTokens": 512, "temperature": 0.5}}))
    assert [step[1] for step in steps] == ["prepare", "export-feedback", "train", "package"]
    for step in steps:
        parse_cli(step[1:])


def test_the_package_step_publishes_the_version_through_the_real_cli(tiny_run, tmp_path):
    """The Job's own `persona package` line, run by the real CLI on a run as `persona train` leaves it
    (persona.json from the Job's train.yaml): the version is published and its persona.json carries
    the PersonaModel's generation defaults."""
    from typer.testing import CliRunner

    from persona_cli.main import app
    from personafleet.store import read_version_info

    store = tmp_path / "store"
    settings = DEFAULTS.model_copy(update={"store_path": store})
    spec = PersonaModelSpec.parse(persona_model(serving={"generation": {"maxNewTokens": 512, "temperature": 0.5}})["spec"])
    job = training_job(OWNER, spec, 7, settings)
    package = commands(job)[-1]
    run = store / "alice" / "v7" / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("merged"))
    train_yaml = job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    (run / "persona.json").write_text(TrainConfig.model_validate(json.loads(train_yaml)).persona.model_dump_json())

    result = CliRunner().invoke(app, package[1:])
    assert result.exit_code == 0, result.output
    published = store / "alice" / "v7"
    assert read_version_info(published).version == 7
    generation = json.loads((published / "persona.json").read_text())["generation"]
    assert (generation["max_new_tokens"], generation["temperature"]) == (512, 0.5)


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


@pytest.mark.parametrize(("resources", "refused"), [
    ({"limits": {"nvidia.com/gpu": 8}}, "limits.nvidia.com/gpu: 8 is over"),
    ({"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": 1}}, "requests.nvidia.com/gpu: 2 is over"),
    ({"limits": {"memory": "65Gi"}}, "limits.memory: 65Gi is over"),
    ({"requests": {"cpu": "16500m"}}, "requests.cpu: 16500m is over"),
    ({"limits": {"nvidia.com/gpu": "lots"}}, "limits.nvidia.com/gpu: 'lots' is not a quantity"),
    ({"requests": {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "1Ti"}, "limits": {"nvidia.com/gpu": 1}}, None),
])
def test_a_resource_may_ask_for_no_more_than_the_chart_caps(resources, refused):
    caps = {"nvidia.com/gpu": 1, "cpu": "16", "memory": "64Gi"}
    parsed = PersonaModelSpec.parse(persona_model(resources=resources)["spec"])
    if refused is None:
        parsed.check_resources(caps)
        return
    with pytest.raises(PersonaError, match=rf"^spec\.resources\.{refused}"):
        parsed.check_resources(caps)


def test_the_operator_refuses_to_start_with_defaults_over_its_own_caps():
    env = {"PERSONA_TRAINING_DEFAULTS": json.dumps({"resources": {"limits": {"nvidia.com/gpu": 2}}}),
           "PERSONA_TRAINING_MAX_RESOURCES": json.dumps({"nvidia.com/gpu": 1})}
    with pytest.raises(PersonaError, match=r"^PERSONA_TRAINING_DEFAULTS: .*resources\.limits\.nvidia\.com/gpu: 2 is over"):
        Settings.from_env(env)
    assert Settings().training_max_resources == {"nvidia.com/gpu": 1}  # capped unless the chart says otherwise


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
