"""The operator's Prometheus metrics (contract 7), registered at import.

Labels stay low-cardinality: the persona (a handful per cluster), an outcome, a step.
"""

from __future__ import annotations

import contextlib
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRAINING_DURATION = Histogram(
    "persona_operator_training_duration_seconds",
    "Wall time of training Jobs, from creation to completion.",
    ["persona", "outcome"],
    buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
)
ROLLOUTS = Counter(
    "persona_operator_rollouts_total",
    "Rollouts of trained versions by outcome (succeeded, failed, rejected by the gate, rolled_back by a canary).",
    ["persona", "outcome"],
)
CANARY_WEIGHT = Gauge(
    "persona_operator_canary_weight",
    "Percent of a persona's conversations its canary version answers (0: no canary).",
    ["persona"],
)
CANARY_ANALYSES = Counter(
    "persona_operator_canary_analyses_total",
    "Canary analyses by verdict (AnalysisPassed, AnalysisFailed, AwaitingData, MetricsUnavailable).",
    ["persona", "verdict"],
)
RECONCILE_ERRORS = Counter(
    "persona_operator_reconcile_errors_total",
    "Reconcile passes that ended in an unexpected error (retried on the next pass).",
    ["persona"],
)
TIME_TO_SERVING = Histogram(
    "persona_operator_time_to_serving_seconds",
    "From a training Job's success to its version serving on every replica.",
    ["persona"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
ROLLOUT_STEP_SECONDS = Histogram(
    "persona_operator_rollout_step_seconds",
    "Duration of each rollout step (route, smoke_test, weigh, switch, verify, prune), successful or not.",
    ["step"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ROLLOUT_FAILURES = Counter(
    "persona_operator_rollout_step_failures_total",
    "Rollouts that failed, by the step that failed (publish_check, route, smoke_test, weigh, switch, verify).",
    ["persona", "step"],
)
ROUTING_CORRECTIONS = Counter(
    "persona_operator_routing_corrections_total",
    "Times the routing table named another serving version than a Ready persona's status and was put back.",
    ["persona"],
)
DRIFTED_REPLICAS = Gauge(
    "persona_operator_drifted_replicas",
    "Ready replicas that, at the last check, did not answer a persona's unpinned requests as its serving version.",
    ["persona"],
)
JOBS_CREATED = Counter(
    "persona_operator_training_jobs_created_total",
    "Training Jobs the operator created (first attempts and retries).",
    ["persona"],
)
TRAINING_STARTED = Gauge(
    "persona_operator_training_started_timestamp_seconds",
    "Unix time the current training began (status.lastTraining.startedAt); present only while the "
    "PersonaModel's phase is Training, so time() minus it is how long it has been training.",
    ["persona"],
)


def initialize(persona: str) -> None:
    """Export the outcome series the alerts watch at zero before anything happens: a series that
    first appears at 1 is no rise to Prometheus's increase(), so the first failure would go unseen."""
    for outcome in ("succeeded", "failed"):
        TRAINING_DURATION.labels(persona, outcome)
    for outcome in ("succeeded", "failed", "rejected"):
        ROLLOUTS.labels(persona, outcome)


def track_training(persona: str, started: float | None) -> None:
    """Show when `persona`'s training began while it is in phase Training (`started`), nothing otherwise."""
    if started is not None:
        TRAINING_STARTED.labels(persona).set(started)
    else:
        with contextlib.suppress(KeyError):
            TRAINING_STARTED.remove(persona)


def forget(persona: str) -> None:
    """Drop a deleted persona's gauges (its counters and histograms keep their totals, as Prometheus expects)."""
    track_training(persona, None)
    for gauge in (DRIFTED_REPLICAS, CANARY_WEIGHT):
        with contextlib.suppress(KeyError):
            gauge.remove(persona)


def serve(port: int, address: str) -> WSGIServer:
    """Expose /metrics in a background thread; the server tells its port (useful with port 0)."""
    server, _thread = start_http_server(port, addr=address)
    return server
