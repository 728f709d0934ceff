"""The rollout gate, status conditions, environment configuration (contract 6) and /metrics."""

from __future__ import annotations

import json

import httpx
import pytest

from persona_operator import metrics
from persona_operator.gate import Evaluation, judge, read_evaluation
from persona_operator.settings import Settings
from persona_operator.spec import RolloutSection
from persona_operator.status import with_condition
from personafleet.errors import PersonaError


def write_report(store, persona, version, loss, perplexity=None, **more):
    run = store / persona / f"v{version}" / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "report.json").write_text(json.dumps({"eval": {"before": {"loss": 9.0},
                                                          "after": {"loss": loss, "perplexity": perplexity}}} | more))


def rules(**rollout) -> RolloutSection:
    return RolloutSection.model_validate(rollout)


def test_gate_passes_within_tolerance_and_rejects_beyond_it():
    serving = Evaluation(loss=2.0, perplexity=7.4)
    assert judge(Evaluation(2.09, None), serving, rules()).passed
    rejected = judge(Evaluation(2.2, None), serving, rules())
    assert not rejected.passed and "2.2000" in rejected.message and "2.1000" in rejected.message
    assert judge(Evaluation(50.0, None), None, rules()).passed  # nothing serves yet


def test_gate_names_the_fidelity_figure_that_fails():
    serving = Evaluation(2.0, None, fidelity=0.6, leaks=0)
    good = Evaluation(2.0, None, fidelity=0.55, leaks=0)
    assert judge(good, serving, rules(minFidelity=0.5, maxFidelityDrop=0.1)).passed
    low = judge(Evaluation(2.0, None, fidelity=0.2, leaks=0), serving, rules(minFidelity=0.5))
    assert not low.passed and low.message == "fidelity 0.20 is below minFidelity 0.50"
    drop = judge(Evaluation(2.0, None, fidelity=0.45, leaks=0), serving, rules(maxFidelityDrop=0.1))
    assert not drop.passed and "0.15 below the serving version's 0.60 (maxFidelityDrop 0.10)" in drop.message
    leaking = judge(Evaluation(2.5, None, fidelity=0.9, leaks=2), serving, rules())  # maxLeaks defaults to 0
    assert not leaking.passed and "2 generated replies leak personal data" in leaking.message
    assert "eval loss 2.5000" in leaking.message  # every failing figure is named
    assert judge(Evaluation(2.0, None, fidelity=0.9, leaks=2), serving, rules(maxLeaks=2)).passed


def test_gate_refuses_a_required_figure_that_was_not_measured_and_passes_old_reports():
    old = Evaluation(2.0, None, unmeasured="the report has no fidelity block")
    assert judge(old, None, rules()).passed and "leaks not counted" in judge(old, None, rules()).message
    refused = judge(old, None, rules(minFidelity=0.3))
    assert not refused.passed and "fidelity is required" in refused.message and "no fidelity block" in refused.message
    # A serving version without a figure gives the drop rule nothing to compare with.
    assert judge(Evaluation(2.0, None, fidelity=0.1, leaks=0), old, rules(maxFidelityDrop=0.05)).passed


def test_fidelity_is_read_from_the_report(tmp_path):
    write_report(tmp_path, "alice", 1, 1.5, fidelity={"score": 0.42, "leaks": {"count": 3}})
    assert read_evaluation(tmp_path, "alice", 1) == Evaluation(1.5, None, fidelity=0.42, leaks=3)
    write_report(tmp_path, "alice", 2, 1.5, fidelity={"prompts": 12, "skipped": "only 12 held-out replies"})
    skipped = read_evaluation(tmp_path, "alice", 2)
    assert skipped.fidelity is None and skipped.leaks is None and "only 12 held-out replies" in skipped.unmeasured
    write_report(tmp_path, "alice", 3, 1.5, fidelity={"score": None, "leaks": {"count": 0},
                                                      "authorship": {"skipped": "a single-author export"}})
    single = read_evaluation(tmp_path, "alice", 3)
    assert single.leaks == 0 and single.fidelity is None and "single-author export" in single.unmeasured


def test_report_is_read_from_the_model_store(tmp_path):
    write_report(tmp_path, "alice", 3, 1.5, 4.48)
    evaluation = read_evaluation(tmp_path, "alice", 3)
    assert (evaluation.loss, evaluation.perplexity, evaluation.fidelity) == (1.5, 4.48, None)
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
