"""The training Job: its manifest (contract 4's command) and how to read its outcome.

The Job's labels are the operator's memory in the cluster: persona, version and generation let
a restarted operator find the Job it started instead of starting a second one.
"""

from __future__ import annotations

import json
import shlex
from pathlib import PurePosixPath
from typing import Any, Literal

import kopf
from kubernetes.client import V1Job
from pydantic import ValidationError

from personafleet.errors import PersonaError, first_error
from personafleet.persona import PersonaSpec

from persona_operator.settings import Settings
from persona_operator.spec import PersonaModelSpec

MANAGED_BY = "persona-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PERSONA = "personafleet.io/persona"
LABEL_VERSION = "personafleet.io/version"
LABEL_GENERATION = "personafleet.io/generation"

WORK_DIR = "/work"
TRAIN_CONFIG_ENV = "PERSONA_TRAIN_CONFIG"

JobOutcome = Literal["running", "succeeded", "failed"]


def job_name(persona: str, version: int) -> str:
    return f"{persona}-v{version}"


def persona_selector(persona: str) -> str:
    """Label selector of every training Job of one persona."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_PERSONA}={persona}"


def job_labels(persona: str, version: int, generation: int) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: "training",
        LABEL_PERSONA: persona,
        LABEL_VERSION: str(version),
        LABEL_GENERATION: str(generation),
    }


# The container's shell is PID 1, which ignores SIGTERM and would not pass it on: `run` starts a
# step in the background and forwards SIGTERM to it, so `persona train` checkpoints before the pod
# goes (exit 143), and returns the step's own exit status.
RUN_STEP = ('run() { "$@" & step=$!; trap \'kill -TERM "$step" 2>/dev/null\' TERM; '
            'while :; do wait "$step" && return 0; code=$?; kill -0 "$step" 2>/dev/null || return "$code"; done; }')


def version_dir(store: PurePosixPath | str, persona: str, version: int) -> PurePosixPath:
    """`STORE/<persona>/v<N>` (contract 1)."""
    return PurePosixPath(store) / persona / f"v{version}"


def training_config(persona: str, spec: PersonaModelSpec) -> dict[str, Any]:
    """`persona train --config` content: the CR's training section in the CLI's snake_case keys,
    and the persona (name, description, generation defaults, reply filter) that `persona package`
    publishes as the version's persona.json.

    JSON is valid YAML, so the Job writes it as train.yaml unchanged.
    """
    generation = PersonaSpec().generation.model_dump(exclude_none=True)
    generation.update(spec.serving.generation.model_dump(exclude_none=True))
    described = {"description": spec.persona.description} if spec.persona.description else {}
    # Inline facts ride in train.yaml; knowledge files are passed as `--knowledge` (training_script).
    facts = {"knowledge": {"facts": spec.knowledge.facts}} if spec.knowledge and spec.knowledge.facts else {}
    rules = spec.serving.reply_filter
    reply_filter = {"reply_filter": rules.model_dump(mode="json", exclude_none=True)} if rules else {}
    return {"persona": {"name": persona, **described, "generation": generation, **reply_filter},
            **spec.training.model_dump(exclude_none=True), **facts}


def training_script(persona: str, version: int, spec: PersonaModelSpec, settings: Settings) -> str:
    """The shell script the Job's container runs: prepare, (export-feedback), train, package."""
    store = PurePosixPath(settings.store_path)
    out = version_dir(store, persona, version)
    dataset = spec.dataset
    exports = [str(store / path) for path in dataset.exports]  # relative paths only (PersonaModelSpec)
    prepare = ["persona", "prepare", *exports, "--out", f"{WORK_DIR}/data"]
    if spec.persona.author_id:
        prepare += ["--persona-id", spec.persona.author_id]
    if dataset.context_turns is not None:
        prepare += ["--context-turns", str(dataset.context_turns)]
    if dataset.window_minutes is not None:
        prepare += ["--window-minutes", str(dataset.window_minutes)]
    if dataset.scrub:
        prepare.append("--scrub")
    steps = [prepare]
    train = ["persona", "train", "--data", f"{WORK_DIR}/data"]
    if dataset.include_feedback:
        steps.append(["persona", "export-feedback", "--persona", persona, "--out", f"{WORK_DIR}/feedback"])
        train += ["--data", f"{WORK_DIR}/feedback"]
    # --resume: a pod replaced after a preemption continues from the run's last checkpoint.
    train += ["--base", spec.base_model, "--out", str(out / "run"), "--config", f"{WORK_DIR}/train.yaml", "--resume"]
    for path in spec.knowledge.files if spec.knowledge else []:
        train += ["--knowledge", str(store / path)]
    steps.append(train)
    # Publishes the version folder only: batching, workers and the reply length cap are the fleet's
    # (`persona serve` flags from the chart), the persona's generation defaults travel in persona.json.
    steps.append(["persona", "package", "--run", str(out / "run"), "--name", persona, "--version", str(version),
                  "--out", str(out)])
    lines = ["set -eu", RUN_STEP, f'printf "%s" "${TRAIN_CONFIG_ENV}" > {WORK_DIR}/train.yaml']
    lines += ["run " + shlex.join(step) for step in steps]
    return "\n".join(lines)


def training_job(
    owner: dict[str, Any], spec: PersonaModelSpec, version: int, settings: Settings
) -> dict[str, Any]:
    """The Job that trains and packages version `version` of the owner's persona."""
    persona = owner["metadata"]["name"]
    generation = owner["metadata"]["generation"]
    labels = job_labels(persona, version, generation)
    defaults = settings.training_defaults
    container: dict[str, Any] = {
        "name": "train",
        "image": settings.training_image,
        "command": ["sh", "-c", training_script(persona, version, spec, settings)],
        "env": [{"name": TRAIN_CONFIG_ENV, "value": json.dumps(training_config(persona, spec), ensure_ascii=False)}],
        "resources": spec.resources if spec.resources is not None else defaults.resources,  # normalised below
        "volumeMounts": [
            {"name": "store", "mountPath": str(settings.store_path)},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if spec.dataset.include_feedback and settings.database_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.database_secret}}]
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(persona, version), "labels": labels},
        "spec": {
            "backoffLimit": 0,  # the operator retries, with back-off, up to rollout.retryLimit
            "activeDeadlineSeconds": settings.training_deadline_seconds,  # pending pods count too
            # A preempted or evicted pod is replaced without failing the Job; it resumes (see --resume).
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,  # training talks to no Kubernetes API
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "nodeSelector": spec.node_selector if spec.node_selector is not None else defaults.node_selector,
                    "tolerations": spec.tolerations if spec.tolerations is not None else defaults.tolerations,
                    "containers": [container],
                    "volumes": [
                        {"name": "store", "persistentVolumeClaim": {"claimName": settings.store_pvc}},
                        {"name": "work", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    kopf.adopt(job, owner=owner)
    return api_ready(job)


def api_ready(job: dict[str, Any]) -> dict[str, Any]:
    """The Job as the API (and the `kubernetes` client's models) take it: every resource quantity a
    string, as YAML's `nvidia.com/gpu: 1` is an integer; anything else the client would refuse
    becomes one `PersonaError` here, not a refusal in `create_namespaced_job` on every pass."""
    for pod_container in job["spec"]["template"]["spec"]["containers"]:
        pod_container["resources"] = {
            section: {name: _quantity(value) for name, value in (amounts or {}).items()}
            if section in ("limits", "requests") else amounts
            for section, amounts in (pod_container.get("resources") or {}).items()
        }
    try:
        V1Job.model_validate(job)
    except ValidationError as exc:
        raise PersonaError(f"the training Job would be refused: {first_error(exc, 'job')}") from None
    return job


def _quantity(value: Any) -> Any:
    """A quantity in the API's string form (`1` -> "1", `0.5` -> "0.5"); other types are left for the
    API to refuse."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def job_outcome(job: dict[str, Any]) -> tuple[JobOutcome, str]:
    """Whether a Job still runs, succeeded or failed, and the controller's reason if it failed."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "succeeded", ""
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or "Failed"
            return "failed", f"{reason}: {condition.get('message') or 'the training container failed'}"
    return "running", ""


def job_version(job: dict[str, Any]) -> int:
    return int(job["metadata"]["labels"][LABEL_VERSION])


def job_generation(job: dict[str, Any]) -> int:
    return int(job["metadata"]["labels"][LABEL_GENERATION])
