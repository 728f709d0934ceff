"""The operator's configuration: environment variables set by the Helm chart (contract 6).

One pydantic model so a wrong value fails at start with the variable's name, not later in a
reconcile. `Settings.from_env()` is the only place the environment is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from persona_operator.spec import SchedulingField, over_caps
from personafleet.errors import PersonaError


class TrainingDefaults(BaseModel):
    """Where training Jobs run when the PersonaModel does not say: the GPU node pool."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)


class Settings(BaseModel):
    """Every knob of the operator, each with the environment variable that sets it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("default", description="PERSONA_NAMESPACE: the namespace watched and written to.")
    training_image: str = Field(
        "personafleet-serve:0.1.0",
        description="PERSONA_TRAINING_IMAGE: image with the `persona` CLI and CUDA torch for training Jobs (the serving image).",
    )
    store_pvc: str = Field("personafleet-store", description="PERSONA_STORE_PVC: the model store's ReadWriteMany PVC.")
    store_path: Path = Field(
        Path("/store"), description="PERSONA_STORE_PATH: where the model store is mounted (operator and Jobs)."
    )
    serving_selector: str = Field(
        "app.kubernetes.io/component=serving",
        description="PERSONA_SERVING_SELECTOR: label selector of the TorchServe pods.",
    )
    serving_bases: dict[str, str] = Field(
        default_factory=dict,
        description="PERSONA_SERVING_BASES: JSON {base model: fleet name} of the chart's serving.bases; a serving pod "
        "carries its fleet's name in the label personafleet.io/base. Empty: one fleet serves every base.",
    )
    serving_inference_port: int = Field(8080, description="PERSONA_SERVING_INFERENCE_PORT")
    serving_model: str = Field(
        "fleet", min_length=1, description="PERSONA_SERVING_MODEL: the fleet model smoke tests are sent to (contract 3)."
    )
    serving_token_file: Path | None = Field(
        None,
        description="PERSONA_SERVING_TOKEN_FILE: TorchServe key_file.json (or a plain token) from the mounted Secret.",
    )
    database_secret: str | None = Field(
        None,
        description="PERSONA_DATABASE_SECRET: Secret exposed to training Jobs (envFrom) for `persona export-feedback`: "
        "the read-only export role's DATABASE_URL (chart: database.feedbackExport), never the bot's login.",
    )
    training_max_resources: dict[str, str | int | float] = Field(
        default_factory=lambda: {"nvidia.com/gpu": 1},
        description="PERSONA_TRAINING_MAX_RESOURCES: JSON {resource: quantity}, the most a training pod may request "
        "or be limited to; a PersonaModel asking for more is refused (names not listed are not capped).",
    )
    training_defaults: TrainingDefaults = Field(
        default_factory=TrainingDefaults,
        description="PERSONA_TRAINING_DEFAULTS: JSON {nodeSelector, tolerations, resources} for training Jobs.",
    )
    training_overrides: frozenset[SchedulingField] = Field(
        frozenset({"resources"}),
        description="PERSONA_TRAINING_OVERRIDES: JSON list of the scheduling fields a PersonaModel may set "
        "(resources, nodeSelector, tolerations); the others come from PERSONA_TRAINING_DEFAULTS only.",
    )
    metrics_port: int = Field(9090, description="METRICS_PORT: Prometheus /metrics.")
    health_port: int = Field(8080, description="PERSONA_HEALTH_PORT: kopf's liveness endpoint /healthz.")
    listen_address: str = Field("0.0.0.0", description="PERSONA_LISTEN_ADDRESS: bind address of /metrics and /healthz.")
    resync_seconds: float = Field(
        30.0, gt=0, description="PERSONA_RESYNC_SECONDS: how often every PersonaModel is reconciled regardless of events."
    )
    rollout_timeout_seconds: float = Field(
        300.0, gt=0, description="PERSONA_ROLLOUT_TIMEOUT_SECONDS: longest wait for a replica's pinned smoke test "
        "(it loads the new adapter)."
    )
    verify_timeout_seconds: float = Field(
        10.0, gt=0, description="PERSONA_VERIFY_TIMEOUT_SECONDS: how long each replica may take to answer as the "
        "new version after the routing table switched (workers notice within about 1 s)."
    )
    retry_backoff_seconds: float = Field(
        30.0, ge=0, description="PERSONA_RETRY_BACKOFF_SECONDS: first retry delay; doubles with every retry."
    )
    prometheus_url: str | None = Field(
        None, description="PERSONA_PROMETHEUS_URL: the Prometheus canary analyses query (its HTTP API, e.g. "
        "http://prometheus.monitoring:9090); without it a PersonaModel cannot use strategy Canary."
    )
    training_deadline_seconds: int = Field(
        86400, ge=60, description="PERSONA_TRAINING_DEADLINE_SECONDS: a training Job's activeDeadlineSeconds "
        "(a Job that never gets a node fails instead of training forever)."
    )

    @field_validator("training_defaults")
    @classmethod
    def _defaults_within_caps(cls, value: TrainingDefaults, info: ValidationInfo) -> TrainingDefaults:
        if why := over_caps(value.resources, info.data.get("training_max_resources") or {}):
            raise ValueError(f"resources.{why} (PERSONA_TRAINING_MAX_RESOURCES)")
        return value

    @field_validator("serving_selector")
    @classmethod
    def _selector_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must select the serving pods, e.g. app.kubernetes.io/component=serving")
        return value

    def replica_selector(self, base: str) -> str:
        """The serving pods of the fleet of `base` (every serving pod when one fleet serves all)."""
        name = self.serving_bases.get(base)
        return f"{self.serving_selector},{BASE_LABEL}={name}" if name else self.serving_selector

    def check_base(self, base: str) -> None:
        """A PersonaModel's base must be one a fleet serves (when the chart lists its bases)."""
        if self.serving_bases and base not in self.serving_bases:
            served = ", ".join(f"{model} ({name})" for model, name in self.serving_bases.items())
            raise PersonaError(f"spec.baseModel {base}: no fleet serves this base (the chart's serving.bases: {served})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the variables listed in `ENVIRONMENT`; unset ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, field in ENVIRONMENT.items():
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            if field in JSON_FIELDS:
                try:
                    values[field] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise PersonaError(f"{variable} is not valid JSON: {exc}") from None
            else:
                values[field] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            variable = next((v for v, f in ENVIRONMENT.items() if f == error["loc"][0]), str(error["loc"][0]))
            raise PersonaError(f"{variable}: {error['msg']}") from None


ENVIRONMENT: dict[str, str] = {
    "PERSONA_NAMESPACE": "namespace",
    "PERSONA_TRAINING_IMAGE": "training_image",
    "PERSONA_STORE_PVC": "store_pvc",
    "PERSONA_STORE_PATH": "store_path",
    "PERSONA_SERVING_SELECTOR": "serving_selector",
    "PERSONA_SERVING_BASES": "serving_bases",
    "PERSONA_SERVING_INFERENCE_PORT": "serving_inference_port",
    "PERSONA_SERVING_MODEL": "serving_model",
    "PERSONA_SERVING_TOKEN_FILE": "serving_token_file",
    "PERSONA_DATABASE_SECRET": "database_secret",
    "PERSONA_TRAINING_DEFAULTS": "training_defaults",
    "PERSONA_TRAINING_OVERRIDES": "training_overrides",
    "PERSONA_TRAINING_MAX_RESOURCES": "training_max_resources",
    "METRICS_PORT": "metrics_port",
    "PERSONA_HEALTH_PORT": "health_port",
    "PERSONA_LISTEN_ADDRESS": "listen_address",
    "PERSONA_RESYNC_SECONDS": "resync_seconds",
    "PERSONA_ROLLOUT_TIMEOUT_SECONDS": "rollout_timeout_seconds",
    "PERSONA_VERIFY_TIMEOUT_SECONDS": "verify_timeout_seconds",
    "PERSONA_RETRY_BACKOFF_SECONDS": "retry_backoff_seconds",
    "PERSONA_TRAINING_DEADLINE_SECONDS": "training_deadline_seconds",
    "PERSONA_PROMETHEUS_URL": "prometheus_url",
}
"""Environment variable -> field. The chart's operator Deployment sets these."""
JSON_FIELDS = frozenset({"training_defaults", "training_overrides", "training_max_resources", "serving_bases"})
BASE_LABEL = "personafleet.io/base"  # on every serving pod: the name of its fleet's base (the chart's serving.bases)
