"""The handler's custom metrics, declared once for TorchServe's metrics configuration.

TorchServe 0.12 in `metrics_mode=prometheus` turns each metric declared under `model_metrics` in
the metrics YAML into a Prometheus collector of its declared type, and HISTOGRAM becomes a real
`io.prometheus.client.Histogram` with the client's default buckets (5 ms .. 10 s) - so p50/p95/p99
come from `histogram_quantile()` over `_bucket` series. (Its own `ts_*_latency_microseconds` are
counters: averages only.) Declaring the metrics here, rather than letting
`model_metrics_auto_detect` discover them, makes them appear on /metrics (HELP/TYPE lines) before
the first request and keeps label names fixed. Label order below is the order the handler passes
values in.

Per-persona metrics (contract 3) add `persona` and `version` (the persona version, "3"). Their
cardinality is bounded by ONE rule, `persona_label`: the first `max_persona_labels` personas of the
routing table have their own label value, every other name is "other" - including names no
version serves, so what a client writes in a request never becomes a series. A request refused
before a version was chosen has `version="none"` (docs/serving.md, "Series per persona").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

import yaml

from personafleet.routing import RoutingTable

logger = logging.getLogger(__name__)

MODEL_NAME, MODEL_VERSION, REASON, TIER = "model_name", "model_version", "reason", "tier"
PERSONA, VERSION, RULE = "persona", "version", "rule"
OTHER_PERSONA = "other"  # the `persona` value of every persona beyond the cap, and of unserved names
NO_VERSION = "none"  # the `version` value of a request refused before a version was chosen


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str  # TorchServe's MetricTypes value: counter | gauge | histogram
    unit: str
    dimensions: tuple[str, ...]
    help: str


REQUESTS = MetricSpec(
    "persona_handler_requests_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION, PERSONA, VERSION),
    "requests routed to a persona version (answered or failed after routing)",
)
GENERATION_SECONDS = MetricSpec(
    "persona_handler_generation_seconds", "histogram", "Seconds", (MODEL_NAME, MODEL_VERSION, PERSONA, VERSION),
    "a reply's time in the worker, from reaching it to its final event (queueing and every decoding step)",
)
TOKENS_GENERATED = MetricSpec(
    "persona_handler_generated_tokens_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION, PERSONA, VERSION),
    "reply tokens generated",
)
BATCH_SIZE = MetricSpec(
    "persona_handler_batch_size", "histogram", "Count", (MODEL_NAME, MODEL_VERSION),
    "requests TorchServe handed to one handler call (dynamic batching at work)",
)
ERRORS = MetricSpec(
    "persona_handler_errors_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION, PERSONA, VERSION, REASON),
    "requests answered with an error, by reason (invalid_json, invalid_request, too_large, ...); "
    'version="none": refused before routing',
)
RETRIEVAL_SECONDS = MetricSpec(
    "persona_handler_retrieval_seconds", "histogram", "Seconds", (MODEL_NAME, MODEL_VERSION),
    "time to pick a request's facts from the version's knowledge (issue 14); versions without facts record none",
)
FACTS_PER_PROMPT = MetricSpec(
    "persona_handler_facts_per_prompt", "histogram", "Count", (MODEL_NAME, MODEL_VERSION),
    "facts retrieved into a request's prompt (0: none matched); versions without facts record none",
)
SLOTS_IN_USE = MetricSpec(
    "persona_handler_slots_in_use", "gauge", "Count", (MODEL_NAME, MODEL_VERSION),
    "adapter slots holding a persona version in a worker (at most maxResidentAdapters)",
)
HOST_ADAPTERS = MetricSpec(
    "persona_handler_host_adapters", "gauge", "Count", (MODEL_NAME, MODEL_VERSION),
    "adapters kept in a worker's host tier (at most maxHostAdapters; 0 when it is off)",
)
ADAPTER_LOADS = MetricSpec(
    "persona_handler_adapter_loads_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION),
    "adapters loaded from the model store (first use, after an eviction, or preloaded for a switch)",
)
ADAPTER_EVICTIONS = MetricSpec(
    "persona_handler_adapter_evictions_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION),
    "adapters dropped to make room (LRU): a steady rate means maxResidentAdapters is too small",
)
SLOT_LOAD_SECONDS = MetricSpec(
    "persona_handler_slot_load_seconds", "histogram", "Seconds", (MODEL_NAME, MODEL_VERSION, TIER),
    "time to put one adapter into a slot, by where it came from: tier=disk (the model store) or "
    "tier=host (the host tier); what a cold persona adds to its first request",
)
ADAPTERS_PER_BATCH = MetricSpec(
    "persona_handler_adapters_per_batch", "histogram", "Count", (MODEL_NAME, MODEL_VERSION),
    "distinct adapters (slots) in one generate: the mix one pass of the slot layers serves",
)
PERSONAS_PER_BATCH = MetricSpec(
    "persona_handler_personas_per_batch", "histogram", "Count", (MODEL_NAME, MODEL_VERSION),
    "distinct personas in one handler call (mixed-persona batching at work)",
)
TIME_TO_FIRST_TOKEN = MetricSpec(
    "persona_handler_time_to_first_token_seconds", "histogram", "Seconds", (MODEL_NAME, MODEL_VERSION, PERSONA, VERSION),
    "from a request reaching the worker to its first reply token (queueing in the worker included)",
)
INTER_TOKEN_SECONDS = MetricSpec(
    "persona_handler_inter_token_seconds", "histogram", "Seconds", (MODEL_NAME, MODEL_VERSION),
    "time between two decoding steps of the live rows (each row gets one token per step)",
)
LIVE_ROWS = MetricSpec(
    "persona_handler_live_rows", "gauge", "Count", (MODEL_NAME, MODEL_VERSION),
    "rows a worker decodes together right now (at most the fleet's batch size)",
)
QUEUED_REQUESTS = MetricSpec(
    "persona_handler_queued_requests", "gauge", "Count", (MODEL_NAME, MODEL_VERSION),
    "requests a worker holds back because the live rows' cache or adapter budget is full",
)
CACHED_TOKENS = MetricSpec(
    "persona_handler_cached_tokens", "gauge", "Count", (MODEL_NAME, MODEL_VERSION),
    "key/value cache columns the live rows hold (padding included; at most maxCachedTokens)",
)
RETIRED_ROWS = MetricSpec(
    "persona_handler_retired_rows_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION, REASON),
    "rows that left the live batch, by reason: stop (end of reply), length (token cap), cancelled (client gone), error",
)
ASR_SECONDS = MetricSpec(
    "persona_asr_transcription_seconds", "histogram", "Seconds", (MODEL_NAME, MODEL_VERSION),
    "ASR model.generate() time of each request's batch (decoding excluded)",
)
ASR_AUDIO_SECONDS = MetricSpec(
    "persona_asr_audio_seconds", "histogram", "Seconds", (MODEL_NAME, MODEL_VERSION),
    "length of each transcribed clip (divide the latency by it for latency per audio second)",
)
ASR_ERRORS = MetricSpec(
    "persona_asr_errors_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION, REASON),
    "ASR requests answered with an error, by reason (invalid_audio, too_long, too_large, ...)",
)
FILTERED_REPLIES = MetricSpec(
    "persona_handler_filtered_replies_total", "counter", "Count", (MODEL_NAME, MODEL_VERSION, PERSONA, RULE),
    "replies the reply filter replaced by the fallback, by persona (bounded by persona_label) and the rule that "
    "matched (issue 24)",
)
HANDLER_METRICS = (REQUESTS, GENERATION_SECONDS, TOKENS_GENERATED, BATCH_SIZE, ERRORS, SLOTS_IN_USE, HOST_ADAPTERS,
                   ADAPTER_LOADS, ADAPTER_EVICTIONS, SLOT_LOAD_SECONDS, ADAPTERS_PER_BATCH, PERSONAS_PER_BATCH,
                   RETRIEVAL_SECONDS, FACTS_PER_PROMPT, TIME_TO_FIRST_TOKEN, INTER_TOKEN_SECONDS, LIVE_ROWS,
                   QUEUED_REQUESTS, CACHED_TOKENS, RETIRED_ROWS, ASR_SECONDS, ASR_AUDIO_SECONDS, ASR_ERRORS,
                   FILTERED_REPLIES)


def persona_label(persona: str | None, table: RoutingTable, most: int) -> str:
    """The `persona` label value of a request: its name when it is among the first `most` personas
    of the routing table, else "other". Table order is the order personas were first routed, the
    same in every worker and replica, so a newly routed persona never takes another's label."""
    if persona is not None and persona in islice(table.personas, most):
        return persona
    return OTHER_PERSONA


def version_label(version: int | None) -> str:
    """The `version` label value: the routed version ("3"), or "none" before routing chose one."""
    return NO_VERSION if version is None else str(version)


def observe(context: Any, spec: MetricSpec, value: float, dimensions: list[str]) -> None:
    """Record a custom metric; a metrics problem is logged, never allowed to fail requests."""
    from ts.metrics.metric_type_enum import MetricTypes

    try:
        context.metrics.get_metric(spec.name, MetricTypes(spec.type)).add_or_update(value, dimensions)
    except Exception as exc:  # noqa: BLE001
        logger.warning("Cannot record metric %s: %s", spec.name, exc)


def metrics_config() -> dict:
    """TorchServe's default metrics configuration plus the handler's `model_metrics`."""
    default = resources.files("ts").joinpath("configs/metrics.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(default)
    model_metrics: dict[str, list[dict]] = {}
    for spec in HANDLER_METRICS:
        model_metrics.setdefault(spec.type, []).append(
            {"name": spec.name, "unit": spec.unit, "dimensions": list(spec.dimensions)}
        )
    config["model_metrics"] = model_metrics
    return config


def write_metrics_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(metrics_config(), sort_keys=False), encoding="utf-8")
    return path
