"""The operator's Prometheus metrics (contract 7), registered at import.

Labels stay low-cardinality: the persona (a handful per cluster), an outcome, a step.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

TRAINING_DURATION = Histogram(
    "persona_operator_training_duration_seconds",
    "Wall time of training Jobs, from creation to completion.",
    ["persona", "outcome"],
    buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
)
ROLLOUTS = Counter(
    "persona_operator_rollouts_total",
    "Rollouts of trained versions by outcome (succeeded, failed, rejected by the gate).",
    ["persona", "outcome"],
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
JOBS_CREATED = Counter(
    "persona_operator_training_jobs_created_total",
    "Training Jobs the operator created (first attempts and retries).",
    ["persona"],
)


def serve(port: int, address: str) -> WSGIServer:
    """Expose /metrics in a background thread; the server tells its port (useful with port 0)."""
    server, _thread = start_http_server(port, addr=address)
    return server
