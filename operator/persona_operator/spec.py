"""The PersonaModel spec (contract 5) as typed values with their defaults.

The CRD's schema is the first line of validation (in the API server); this model gives the
operator defaults and typed access, and turns what the schema cannot express into one clear
message for the resource's status.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from string import Template
from typing import Any, Literal

from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from personafleet.errors import PersonaError, first_error
from personafleet.names import MAX_NEW_TOKENS
from personafleet.reply_rules import ReplyFilterRules

SchedulingField = Literal["resources", "nodeSelector", "tolerations"]


def over_caps(resources: dict[str, Any], caps: dict[str, Any]) -> str | None:
    """Why a pod's `resources` ask for more than `caps` (resource name -> the most a training pod may
    request or be limited to; names not listed are not capped), or None when they do not."""
    for section in ("requests", "limits"):
        for name, value in ((resources or {}).get(section) or {}).items():
            if name not in caps:
                continue
            try:
                asked = parse_quantity(value)
            except (ValueError, TypeError):
                return f"{section}.{name}: {value!r} is not a quantity"
            if asked > parse_quantity(caps[name]):
                return f"{section}.{name}: {value} is over this installation's cap of {caps[name]}"
    return None


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class PersonaSection(_Camel):
    description: str = ""
    author_id: str | None = None


class DatasetSection(_Camel):
    exports: list[str] = Field(min_length=1)
    context_turns: int | None = Field(None, ge=1)
    window_minutes: float | None = Field(None, ge=0)
    scrub: bool = False
    include_feedback: bool = False

    @field_validator("exports")
    @classmethod
    def _inside_the_store(cls, exports: list[str]) -> list[str]:
        """The model store is the only source of training data: paths are relative to it, and may
        neither be absolute (another volume of the training pod) nor climb out of it."""
        for path in exports:
            if path.startswith("/") or ".." in PurePosixPath(path).parts:
                raise ValueError(f"{path!r} is not inside the model store (give a path relative to it)")
        return exports


class KnowledgeSection(_Camel):
    """Facts about the persona (issue 14): inline and/or files in the model store."""

    facts: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)

    @field_validator("files")
    @classmethod
    def _relative_to_the_store(cls, files: list[str]) -> list[str]:
        """Knowledge files live in the model store, like the persona's data; nothing outside it."""
        for path in files:
            if path.startswith("/") or ".." in PurePosixPath(path).parts:
                raise ValueError(f"{path!r} must be a path inside the model store (relative, no '..')")
        return files

    def missing(self, store: str) -> list[str]:
        """The files that are not (yet) in the model store: a Job would fail on them."""
        return [path for path in self.files if not (Path(store) / path).is_file()]


class TrainingSection(_Camel):
    lora_rank: int | None = Field(None, ge=1)
    lora_alpha: float | None = Field(None, gt=0)
    lora_dropout: float | None = Field(None, ge=0, lt=1)
    target_modules: list[str] | None = None
    learning_rate: float | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    gradient_accumulation: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    seed: int | None = None


class GenerationSection(_Camel):
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, ge=1)


class ServingSection(_Camel):
    """What a persona says about its serving: its generation defaults and its reply filter. Batching,
    workers and timeouts belong to the fleet model every persona shares (the chart's serving values)."""

    generation: GenerationSection = Field(default_factory=GenerationSection)
    reply_filter: ReplyFilterRules | None = None  # validated here: a bad pattern is InvalidSpec, never a failed Job


QUERY_PLACEHOLDERS = frozenset({"persona", "version", "window"})
MAX_QUERY_CHARS = 2000
MAX_CANARY_STEPS = 20


class AnalysisQueries(_Camel):
    """PromQL templates overriding the defaults (`persona_operator.analysis.DEFAULT_QUERIES`); each
    answers one number for the canary version, with `$persona`, `$version` and `$window` (the time
    since the step began, e.g. `120s`) filled in."""

    ratings: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    like_ratio: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    requests: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    error_rate: str | None = Field(None, max_length=MAX_QUERY_CHARS)

    @field_validator("*")
    @classmethod
    def _known_placeholders(cls, query: str | None) -> str | None:
        if query is not None:
            template = Template(query)
            unknown = sorted(set(template.get_identifiers()) - QUERY_PLACEHOLDERS)
            if unknown or not template.is_valid():
                raise ValueError(f"a template may use $persona, $version and $window only (found {unknown or 'a stray $'})")
        return query


class AnalysisSection(_Camel):
    """How a canary step is judged: by the people talking to the persona (the 👍 share of their
    ratings) and by serving (the share of requests answered with an error), from Prometheus."""

    interval_seconds: float = Field(30, gt=0)
    timeout_seconds: float = Field(3600, gt=0)
    min_ratings: int = Field(20, ge=0)
    min_requests: int = Field(50, ge=0)
    min_like_ratio: float = Field(0.5, ge=0, le=1)
    max_error_rate: float = Field(0.05, ge=0, le=1)
    queries: AnalysisQueries = Field(default_factory=AnalysisQueries)


class CanarySection(_Camel):
    steps: list[int] = Field(default_factory=lambda: [10, 50], min_length=1, max_length=MAX_CANARY_STEPS)
    min_step_seconds: float = Field(600, ge=0)
    analysis: AnalysisSection = Field(default_factory=AnalysisSection)

    @field_validator("steps")
    @classmethod
    def _increasing_percentages(cls, steps: list[int]) -> list[int]:
        """Shares of the conversations, growing; a final 100 is the promotion every canary ends with."""
        if any(not 0 < step <= 100 for step in steps) or any(a >= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"{steps} must be increasing percentages between 1 and 100")
        return steps[:-1] if steps[-1] == 100 and len(steps) > 1 else steps


class RolloutSection(_Camel):
    keep_versions: int = Field(2, ge=1)
    max_eval_loss_increase: float = Field(0.05, ge=0)
    # Fidelity (issue 24, report.json `fidelity`): unset rules are not checked; maxLeaks always is.
    min_fidelity: float | None = Field(None, ge=0, le=1)
    max_fidelity_drop: float | None = Field(None, ge=0, le=1)
    max_leaks: int = Field(0, ge=0)
    smoke_test: bool = True
    retry_limit: int = Field(3, ge=0)
    strategy: Literal["Immediate", "Canary"] = "Immediate"
    canary: CanarySection = Field(default_factory=CanarySection)


class PersonaModelSpec(_Camel):
    persona: PersonaSection = Field(default_factory=PersonaSection)
    base_model: str = Field(min_length=1)
    dataset: DatasetSection
    training: TrainingSection = Field(default_factory=TrainingSection)
    knowledge: KnowledgeSection | None = None
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    serving: ServingSection = Field(default_factory=ServingSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> PersonaModelSpec:
        """Validate a spec; a problem becomes one `PersonaError` line naming the field."""
        try:
            return cls.model_validate(spec)
        except ValidationError as exc:
            raise PersonaError(f"spec.{first_error(exc, 'spec')}") from None

    def check_resources(self, caps: dict[str, Any]) -> None:
        """Refuse resources above the installation's caps (the chart's training.maxResources): one
        PersonaModel could otherwise take every GPU of the pool."""
        if self.resources is not None and (why := over_caps(self.resources, caps)):
            raise PersonaError(f"spec.resources.{why} (the chart's training.maxResources)")

    def check_canary(self, prometheus_url: str | None) -> None:
        """A canary is judged from Prometheus: refuse one where the installation names none."""
        if self.rollout.strategy == "Canary" and not prometheus_url:
            raise PersonaError("spec.rollout.strategy: Canary is judged from Prometheus, and this installation names "
                               "none (the chart's operator.prometheusUrl)")

    def check_scheduling(self, allowed: frozenset[str]) -> None:
        """Refuse scheduling fields the installation does not let a PersonaModel set (the chart's
        training.allowedOverrides): the Job would otherwise run where, and with what, its author says."""
        given = sorted(to_camel(name) for name in ("resources", "node_selector", "tolerations")
                       if getattr(self, name) is not None)
        refused = [name for name in given if name not in allowed]
        if refused:
            permitted = ", ".join(sorted(allowed)) or "none"
            raise PersonaError(f"spec.{refused[0]}: this installation does not let a PersonaModel set it "
                               f"(the chart's training.allowedOverrides: {permitted})")
