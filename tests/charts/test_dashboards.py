"""Every Grafana query names a metric some component really exports. The names come from real
/metrics output: the bot's and the operator's Prometheus registries, and a real TorchServe (the
handler's metrics included) after one answered and one refused request."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest

from personafleet.client import InferenceClient, InferenceRejected
from personafleet.inference import InferenceRequest
from tests.charts.conftest import CHART

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# Exported outside this project: NVIDIA's DCGM exporter (GPU panels, shown when it is installed).
EXTERNAL = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"}
# The variable each label is filtered by: a panel selecting a metric that carries `persona` shows the
# chosen personas, one carrying only `model_name` (TorchServe's models) the chosen models.
VARIABLE_OF_LABEL = {"persona": 'persona=~"$persona"', "model_name": 'model_name=~"$model"'}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names(exposition: str) -> set[str]:
    """Every series name Prometheus stores from a /metrics text: sampled names as written, and
    declared ones (TYPE lines; a histogram's _bucket/_sum/_count) that have no sample yet.
    (prometheus_client's parser is not used: it renames counters without `_total`, such as
    TorchServe's ts_queue_latency_microseconds, which Prometheus keeps as they are.)"""
    names: set[str] = set()
    for line in exposition.splitlines():
        declared = re.match(r"# TYPE ([A-Za-z_:][\w:]*) (\w+)", line)
        if declared:
            name, kind = declared.groups()
            names.add(name)
            if kind in ("histogram", "summary"):
                names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES[kind == "summary":])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][\w:]*", line).group())
    return names


def queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target, rows' nested panels included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its label matchers) of each series selector in a PromQL expression."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = re.findall(r'(?<![\w.$"])([A-Za-z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()', expr)
    return [(name, matchers) for name, matchers in found if name not in PROMQL_WORDS and not name.startswith("__")]


def label_names(torchserve_metrics: str) -> dict[str, set[str]]:
    """Label names of every series name the dashboards may select: the handler's declared dimensions,
    the bot's and operator's collectors (labelled ones have no sample until first used), and
    TorchServe's built-ins as its real exposition shows them."""
    from persona_serving.metrics import HANDLER_METRICS

    labels: dict[str, set[str]] = {}
    for line in torchserve_metrics.splitlines():
        sample = re.match(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", line)
        if sample:
            labels.setdefault(sample[1], set()).update(re.findall(r'(\w+)="', sample[2]))
    families = {spec.name: set(spec.dimensions) for spec in HANDLER_METRICS}
    families |= {name: set(collector._labelnames) for collector, names in REGISTRY._collector_to_names.items()
                 for name in names if hasattr(collector, "_labelnames")}
    for family, names in families.items():
        for suffix in ("", *HISTOGRAM_SUFFIXES):
            labels[family + suffix] = names
    return labels


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and numbers removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, $variables)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    identifiers = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", expr)
    return {name for name, call in identifiers if not call and name not in PROMQL_WORDS}


@pytest.fixture(scope="module")
def torchserve_metrics(torchserve) -> str:
    """TorchServe's real /metrics after traffic: one reply and one refused request."""

    async def traffic() -> None:
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, retries=0) as client:
            reply = await client.reply(torchserve.persona, InferenceRequest(message="Привет, как дела с деплоем?"))
            assert reply.reply and reply.model_version
            with pytest.raises(InferenceRejected):
                await client.reply("someone-else", InferenceRequest(message="hi"))

    asyncio.run(traffic())
    response = httpx.get(f"{torchserve.metrics_url}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


@pytest.fixture(scope="module")
def exported(torchserve_metrics) -> dict[str, set[str]]:
    """Series names per component, each from real exposition text."""
    import persona_bot.metrics  # noqa: F401 - registers the bot's metrics
    import persona_operator.metrics  # noqa: F401 - registers the operator's metrics

    ours = series_names(generate_latest(REGISTRY).decode())
    return {
        "bot": {n for n in ours if n.startswith("persona_bot_")},
        "operator": {n for n in ours if n.startswith("persona_operator_")},
        "torchserve": series_names(torchserve_metrics),
    }


def test_the_components_export_what_contract_7_names(exported):
    assert "persona_bot_reply_latency_seconds_bucket" in exported["bot"]
    assert "persona_operator_rollouts_total" in exported["operator"]
    assert {"ts_inference_requests_total", "ts_queue_latency_microseconds", "persona_handler_requests_total",
            "persona_handler_generation_seconds_bucket", "persona_handler_errors_total"} <= exported["torchserve"]


def test_the_query_parser_finds_the_metrics(exported):
    expr = ('histogram_quantile(0.95, sum by (le, model_name) (rate(persona_handler_generation_seconds_bucket'
            '{model_name=~"$persona"}[$__rate_interval]))) / 1e6 + on (x) sum(persona_bot_store_up)')
    assert metric_names(expr) == {"persona_handler_generation_seconds_bucket", "persona_bot_store_up"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_names_a_metric_a_component_exports(path, exported):
    dashboard = json.loads(path.read_text())
    known = set().union(*exported.values()) | EXTERNAL
    found = list(queries(dashboard))
    assert found
    for title, expr in found:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: {sorted(names - known)} is exported by no component"
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for query in variables:
        metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query).group(1)
        assert metric in known


def test_the_selector_parser_sees_each_metric_with_its_matchers():
    expr = ('sum by (persona) (rate(a_total{persona=~"$persona", version!="none"}[5m])) / ignoring (version) '
            'group_left sum(rate(b_bucket[$__rate_interval])) + histogram_quantile(0.5, c)')
    assert selectors(expr) == [("a_total", '{persona=~"$persona", version!="none"}'), ("b_bucket", ""), ("c", "")]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_is_filtered_by_the_variable_of_its_metrics(path, torchserve_metrics, exported):
    """`persona` filters what carries a persona label, `model` what carries TorchServe's model_name,
    and no panel is filtered by a label its metric lacks (which would empty it)."""
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["model"]["query"]["query"] == "label_values(ts_inference_requests_total, model_name)"
    assert variables["persona"]["query"]["query"] == "label_values(persona_handler_requests_total, persona)"
    labels = label_names(torchserve_metrics)
    checked = 0
    for title, expr in queries(dashboard):
        for name, matchers in selectors(expr):
            carried = labels.get(name, set())
            filters = [VARIABLE_OF_LABEL[label] for label in sorted(carried) if label in VARIABLE_OF_LABEL]
            if filters:  # per-persona serving metrics carry both: a model panel or a persona panel
                assert any(f in matchers for f in filters), f"{title}: {name}{matchers} is filtered by none of {filters}"
                checked += 1
            assert "$persona" not in matchers or "persona" in carried, f"{title}: {name} has no persona label"
            assert "$model" not in matchers or "model_name" in carried, f"{title}: {name} has no model_name label"
    assert checked > 30


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_the_dashboard_covers_what_operators_watch(path):
    """Request rate, p50/p95/p99 of inference by persona and version, queue latency, bot end-to-end
    latency, errors, the fleet's adapters (resident, loads, evictions, load time, personas per
    batch), training durations, rollout outcomes, GPU use."""
    dashboard = json.loads(path.read_text())
    text = "\n".join(expr for _, expr in queries(dashboard))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, model_name, model_version) (rate(persona_handler_generation_seconds_bucket" in text
        assert f"histogram_quantile({quantile}, sum by (le, persona) (rate(persona_bot_reply_latency_seconds_bucket" in text
    # The per-persona row: rate, p95, errors and which version serves, by persona (contract 3).
    for fragment in ("sum by (persona, version) (rate(persona_handler_requests_total",
                     "histogram_quantile(0.95, sum by (le, persona) (rate(persona_handler_generation_seconds_bucket",
                     "sum by (persona, reason) (rate(persona_handler_errors_total",
                     "/ ignoring (version) group_left sum by (persona) (rate(persona_handler_requests_total"):
        assert fragment in text, fragment
    for metric in ("ts_inference_requests_total", "ts_queue_latency_microseconds", "persona_handler_errors_total",
                   "persona_bot_replies_total", "persona_operator_training_duration_seconds_sum",
                   "persona_operator_rollouts_total", "DCGM_FI_DEV_GPU_UTIL", "persona_handler_slots_in_use",
                   "persona_handler_host_adapters", "persona_handler_adapter_loads_total",
                   "persona_handler_adapter_evictions_total", "persona_handler_slot_load_seconds_bucket",
                   "persona_handler_adapters_per_batch_bucket", "persona_handler_personas_per_batch_bucket"):
        assert metric in text, metric
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "Grafana needs unique panel ids"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_the_canary_row_compares_the_versions_of_a_persona(path):
    """Issue 23: traffic share, 👍 share, error rate and p95, each by persona and version."""
    dashboard = json.loads(path.read_text())
    start = next(i for i, p in enumerate(dashboard["panels"]) if p["type"] == "row" and p["title"].startswith("Canary"))
    row = dashboard["panels"][start + 1:start + 5]
    exprs = {panel["title"]: "\n".join(t["expr"] for t in panel["targets"]) for panel in row}
    assert all("by (persona, version)" in expr or "by (le, persona, version)" in expr for expr in exprs.values()), exprs
    text = "\n".join(exprs.values())
    for metric in ("persona_handler_requests_total", "persona_operator_canary_weight", "persona_bot_feedback_votes_total",
                   "persona_handler_errors_total", "persona_handler_generation_seconds_bucket"):
        assert metric in text, metric
