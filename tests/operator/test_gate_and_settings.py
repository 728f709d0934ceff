"""The rollout gate, status conditions, environment configuration (contract 6) and /metrics."""

from __future__ import annotations

import json

import httpx
import pytest

from persona_operator import metrics
from persona_operator.gate import Evaluation, judge, read_evaluation
from persona_operator.settings import Settings
from persona_operator.status import with_condition
from personafleet.errors import PersonaError


def write_report(store, persona, version, loss, perplexity=None):
    run = store / persona / f"v{version}" / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "report.json").write_text(json.dumps({"eval": {"before": {"loss": 9.0},
                                                          "after": {"loss": loss, "perplexity": perplexity}}}))


def test_gate_passes_within_tolerance_and_rejects_beyond_it():
    serving = Evaluation(loss=2.0, perplexity=7.4)
    assert judge(Evaluation(2.09, None), serving, 0.05).passed
    rejected = judge(Evaluation(2.2, None), serving, 0.05)
    assert not rejected.passed and "2.2000" in rejected.message and "2.1000" in rejected.message
    assert judge(Evaluation(50.0, None), None, 0.05).passed  # nothing serves yet


def test_report_is_read_from_the_model_store(tmp_path):
    write_report(tmp_path, "alice", 3, 1.5, 4.48)
    assert read_evaluation(tmp_path, "alice", 3) == Evaluation(1.5, 4.48)
    with pytest.raises(PersonaError, match="no training report"):
        read_evaluation(tmp_path, "alice", 4)
    (tmp_path / "alice" / "v3" / "run" / "report.json").write_text('{"eval": {}}')
    with pytest.raises(PersonaError, match="eval.after.loss"):
        read_evaluation(tmp_path, "alice", 3)


def test_condition_transition_time_changes_only_when_the_status_flips():
    first = with_condition([], "Ready", False, "NotServing", "nothing yet")
    first[0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    same = with_condition(first, "Ready", False, "NotServing", "still nothing")
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z" and same[0]["message"] == "still nothing"
    flipped = with_condition(same, "Ready", True, "Serving", "version 1 serves")
    assert flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z" and len(flipped) == 1


def test_settings_from_environment():
    settings = Settings.from_env({"PERSONA_NAMESPACE": "bots", "PERSONA_SERVING_INFERENCE_PORT": "18080",
                                  "PERSONA_STORE_PATH": "/mnt/store", "METRICS_PORT": "9100",
                                  "PERSONA_SERVING_MODEL": "fleet-large", "PERSONA_VERIFY_TIMEOUT_SECONDS": "4",
                                  "PERSONA_TRAINING_DEFAULTS": '{"nodeSelector": {"pool": "gpu"}}'})
    assert (settings.namespace, settings.serving_inference_port, str(settings.store_path)) == ("bots", 18080, "/mnt/store")
    assert (settings.serving_model, settings.verify_timeout_seconds) == ("fleet-large", 4.0)
    assert settings.training_defaults.node_selector == {"pool": "gpu"} and settings.metrics_port == 9100
    assert Settings.from_env({}).serving_inference_port == 8080


@pytest.mark.parametrize(("environ", "message"), [
    ({"PERSONA_SERVING_INFERENCE_PORT": "eighty"}, "PERSONA_SERVING_INFERENCE_PORT"),
    ({"PERSONA_VERIFY_TIMEOUT_SECONDS": "0"}, "PERSONA_VERIFY_TIMEOUT_SECONDS"),
    ({"PERSONA_TRAINING_DEFAULTS": "{nodeSelector"}, "PERSONA_TRAINING_DEFAULTS is not valid JSON"),
    ({"PERSONA_SERVING_SELECTOR": " "}, "PERSONA_SERVING_SELECTOR"),
])
def test_bad_settings_name_the_variable(environ, message):
    with pytest.raises(PersonaError, match=message):
        Settings.from_env(environ)


def test_metrics_endpoint_exports_the_operator_metrics():
    metrics.ROLLOUTS.labels("metrics-test", "succeeded").inc()
    server = metrics.serve(0, "127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").text
    finally:
        server.shutdown()
        server.server_close()
    for name in ("persona_operator_training_duration_seconds", "persona_operator_rollouts_total",
                 "persona_operator_reconcile_errors_total", "persona_operator_time_to_serving_seconds",
                 "persona_operator_rollout_step_seconds", "persona_operator_rollout_step_failures_total",
                 "persona_operator_routing_corrections_total", "persona_operator_drifted_replicas"):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    assert 'persona_operator_rollouts_total{outcome="succeeded",persona="metrics-test"} 1.0' in text
