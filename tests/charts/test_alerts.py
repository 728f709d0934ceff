"""The chart's alerting rules with the real tools: `promtool check rules` on the rendered rules,
`promtool test rules` unit tests in which every alert fires and stays silent, one runbook section
per alert, and a PrometheusRule where the Prometheus Operator is installed (a ConfigMap elsewhere)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import helm_python
import pytest
import yaml

from tests.charts.conftest import ROOT, find

RULES_FILE = "personafleet.rules.yaml"
PROMETHEUS_RULE = "monitoring.coreos.com/v1/PrometheusRule"
UNIT_TESTS = Path(__file__).parent / "alerts" / "personafleet.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
SEVERITIES = {"critical", "warning"}


def rules_of(objects: list[dict]) -> dict:
    """The rule groups of the rendered ConfigMap's rules file."""
    return yaml.safe_load(find(objects, "ConfigMap", "-alerts")["data"][RULES_FILE])


def alerts(rules: dict) -> list[dict]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names(rules: dict) -> set[str]:
    return {rule["alert"] for rule in alerts(rules)}


def promtool(prometheus_bin: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(prometheus_bin / "promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rules(render) -> dict:
    return rules_of(render())


def write_unit_tests(rules: dict, folder: Path, tests: dict | None = None, annotated: frozenset[str] = frozenset()) -> Path:
    """The rules beside the unit tests; annotations only on the `annotated` alerts (promtool
    compares them whole, so the shared unit tests leave them out)."""
    bare = {"groups": [{**group, "rules": [{k: v for k, v in rule.items() if k != "annotations" or rule.get("alert") in annotated}
                                           for rule in group["rules"]]}
                       for group in rules["groups"]]}
    (folder / RULES_FILE).write_text(yaml.safe_dump(bare, sort_keys=False))
    path = folder / UNIT_TESTS.name
    path.write_text(UNIT_TESTS.read_text() if tests is None else yaml.safe_dump(tests, sort_keys=False))
    return path


def test_promtool_accepts_the_rendered_rules(rules, prometheus_bin, tmp_path):
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(rules, sort_keys=False))
    checked = promtool(prometheus_bin, "check", "rules", RULES_FILE, cwd=tmp_path)
    assert checked.returncode == 0 and not checked.stderr, checked.stdout + checked.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules['groups'])} rules found" in checked.stdout


def test_every_alert_fires_and_stays_silent_in_promtool_unit_tests(rules, prometheus_bin, tmp_path):
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for name in alert_names(rules):
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name} never fires"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name} is never silent"
    write_unit_tests(rules, tmp_path)
    tested = promtool(prometheus_bin, "test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_unit_test_that_expects_silence_from_a_firing_alert_fails(rules, prometheus_bin, tmp_path):
    """The unit tests can fail: the first firing expectation, turned into silence, is reported."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    case = next(c for t in tests["tests"] for c in t.get("alert_rule_test", []) if c["exp_alerts"])
    case["exp_alerts"] = []
    write_unit_tests(rules, tmp_path, tests)
    tested = promtool(prometheus_bin, "test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0 and case["alertname"] in tested.stdout + tested.stderr


@pytest.mark.parametrize("alert, description", [
    ("PersonaServingErrorRatio", "devops-dude: 10% of its routed requests fail."),
    ("PersonaReplySLOBudgetBurn", "20% of messages got no reply within 5.0s over {window}; the objective is 0.99 within 5.0s."),
])
def test_the_descriptions_render_with_the_alerts_values(rules, prometheus_bin, tmp_path, alert, description):
    """Prometheus's templates in the annotations, executed by promtool on the unit tests' series."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    case = next(c for t in tests["tests"] for c in t.get("alert_rule_test", []) if c["alertname"] == alert and c["exp_alerts"])
    test = next(t for t in tests["tests"] if case in t.get("alert_rule_test", []))
    by_window = {r["labels"].get("window"): r["annotations"] for r in alerts(rules) if r["alert"] == alert}
    for expected in case["exp_alerts"]:
        annotations = by_window[expected["exp_labels"].get("window")]
        expected["exp_annotations"] = {**annotations, "description": description.format(window=expected["exp_labels"].get("window"))}
    write_unit_tests(rules, tmp_path, {**tests, "tests": [{**test, "alert_rule_test": [case]}]}, frozenset({alert}))
    tested = promtool(prometheus_bin, "test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_severity_a_summary_and_its_runbook_section(rules):
    sections = re.findall(r"^## (\w+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert len(sections) == len(set(sections))
    assert set(sections) == alert_names(rules), "docs/runbook.md needs one section per alert, and no other"
    for alert in alerts(rules):
        assert alert["labels"]["severity"] in SEVERITIES
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"]
        assert annotations["runbook_url"] == f"docs/runbook.md#{alert['alert'].lower()}"


def test_where_the_prometheus_operator_is_installed_the_rules_are_a_prometheus_rule(render, rules):
    objects = render({"metrics": {"prometheusOperator": {"labels": {"release": "kube-prometheus-stack"}}}},
                     api_versions=(PROMETHEUS_RULE,))
    rule = find(objects, "PrometheusRule", "-alerts")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == rules
    assert not [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-alerts")]


def test_the_chart_values_reach_the_rules(render, prometheus_bin, tmp_path):
    custom = rules_of(render({"metrics": {"alerts": {
        "labels": {"team": "chat"}, "runbookUrl": "https://git.example.com/fleet/docs/runbook.md",
        "replySlo": {"objective": 0.995, "thresholdSeconds": "2.5",
                     "burnRates": [{"severity": "critical", "longWindow": "2h", "shortWindow": "10m", "factor": 10}]},
        "errorRatio": {"threshold": 0.2}, "trainingStuckSeconds": 3600,
    }}}))
    by_name = {a["alert"]: a for a in alerts(custom)}
    burn = by_name["PersonaReplySLOBudgetBurn"]["expr"]
    assert "ratio_rate2h" in burn and "ratio_rate10m" in burn and "(10 * (1 - 0.995))" in burn
    records = [r for g in custom["groups"] for r in g["rules"] if "record" in r]
    assert {r["record"] for r in records} == {"personafleet:reply_slo_errors:ratio_rate2h", "personafleet:reply_slo_errors:ratio_rate10m"}
    assert all('le="2.5"' in r["expr"] for r in records)
    assert by_name["PersonaServingErrorRatio"]["expr"].endswith("> 0.2")
    assert by_name["PersonaModelStuckInTraining"]["expr"].endswith("> 3600")
    assert all(a["labels"]["team"] == "chat" for a in by_name.values())
    assert by_name["PersonaBotDown"]["annotations"]["runbook_url"] == "https://git.example.com/fleet/docs/runbook.md#personabotdown"
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(custom))
    assert promtool(prometheus_bin, "check", "rules", RULES_FILE, cwd=tmp_path).returncode == 0


def test_alerts_follow_the_components_that_are_installed(render):
    everything = alert_names(rules_of(render()))
    assert alert_names(rules_of(render({"bot": {"enabled": False}}))) == everything - {
        "PersonaReplySLOBudgetBurn", "PersonaBotDown", "PersonaBotDatabaseDown", "PersonaASRErrors"}
    assert alert_names(rules_of(render({"operator": {"enabled": False}}))) == everything - {
        "PersonaTrainingJobFailed", "PersonaRolloutRolledBack", "PersonaModelStuckInTraining"}
    assert alert_names(rules_of(render({"asr": {"enabled": False}}))) == everything - {"PersonaASRErrors"}
    disabled = render({"metrics": {"alerts": {"enabled": False}}}, api_versions=(PROMETHEUS_RULE,))
    assert not [o for o in disabled if o["metadata"]["name"].endswith("-alerts")]


@pytest.mark.parametrize("alerts_values", [
    {"replySlo": {"thresholdSeconds": "3"}},  # not a bucket bound of the bot's histogram
    {"replySlo": {"objective": 1}},
    {"errorRatio": {"window": "5 minutes"}},
])
def test_alert_values_that_cannot_work_are_refused(render, alerts_values):
    with pytest.raises(helm_python.HelmError, match="metrics/alerts"):
        render({"metrics": {"alerts": alerts_values}})
