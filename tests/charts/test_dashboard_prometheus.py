"""The dashboard on a real Prometheus: Debian's Prometheus 2.42 scrapes a real `persona serve`
(TorchServe with the fleet) and the real bot (against the fake Bot API and a real Postgres) through
a short load, then evaluates every expression of the dashboard, its variables included, through
the HTTP API: none may fail, and the serving panels must show data."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable, TokenSource
from personafleet.inference import InferenceRequest
from personafleet.routing import update_routing
from tests.bot.conftest import bot_env, model, running_bot, telegram  # noqa: F401 - the bot's fixtures
from tests.charts.test_dashboards import DASHBOARDS
from tests.fixtures.torchserve import OTHER_PERSONA, PERSONA, initial_routing

pytestmark = pytest.mark.slow

# Grafana's own variables, as a dashboard with every persona and model selected sends them.
GRAFANA = {"$__rate_interval": "1m", "$persona": ".*", "$model": ".*"}
# Rows whose every query must return data after the load (the operator's and the GPU's stay
# empty here: no training runs, no DCGM exporter).
ROWS_WITH_DATA = ("Serving", "Fleet adapters", "Personas", "Telegram bot")
# What a healthy short load cannot show: a failed Telegram update; a voice message (the fixture
# serves no speech model).
MAY_STAY_EMPTY = ('persona_bot_updates_total{outcome="error"}', "persona_asr_", "persona_bot_asr_", "persona_bot_voice_")
BROKEN_VERSION = 9  # routed for pinned requests, but has no folder in the store: adapter_unavailable


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA.items():
        expr = expr.replace(variable, value)
    return expr


def panels_by_row(dashboard: dict) -> list[tuple[str, dict]]:
    """(row title, panel) of every panel; a panel belongs to the row above it on the grid."""
    rows = sorted((p["gridPos"]["y"], p["title"]) for p in dashboard["panels"] if p["type"] == "row")
    placed = []
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            row = max((r for r in rows if r[0] <= panel["gridPos"]["y"]), default=(0, ""))[1]
            placed.append((row, panel))
    return placed


async def load(torchserve, telegram) -> None:
    """Three rounds a second or two apart (so that rates see increases): bot conversations, both
    personas and a pinned version straight to the inference API, refused requests, and a version
    whose adapter cannot load."""
    headers = TokenSource(token_file=torchserve.key_file).headers()
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, retries=0) as client, \
            httpx.AsyncClient(base_url=torchserve.inference_url, timeout=60) as http:
        for round_ in range(3):
            sent_before = len(telegram.sent)
            for chat in (71, 72):
                telegram.message(f"как дела, раунд {round_}?", chat_id=chat)
            asks = [client.reply(persona, InferenceRequest(message=f"привет {round_}", generation={"max_new_tokens": 4}))
                    for persona in (PERSONA, PERSONA, OTHER_PERSONA, OTHER_PERSONA)]
            asks.append(client.reply(PERSONA, InferenceRequest(message="а v2?", generation={"max_new_tokens": 4}), version=2))
            await asyncio.gather(*asks)
            with pytest.raises(InferenceRejected):
                await client.reply("nobody-here", InferenceRequest(message="hi"))
            with pytest.raises(InferenceUnavailable):
                await client.reply(PERSONA, InferenceRequest(message="hi"), version=BROKEN_VERSION)
            assert (await http.post("/predictions/fleet", content=b"{oops", headers=headers)).status_code == 400
            sent = await telegram.wait_sent(sent_before + 2, timeout=90)
            if round_ == 0:
                telegram.vote(sent[-1], user_id=5)
            await asyncio.sleep(1.5)


async def test_every_dashboard_expression_evaluates_and_the_serving_panels_show_data(
        prometheus, torchserve, telegram, running_bot):  # noqa: F811
    update_routing(torchserve.model_store, lambda table: table.add(PERSONA, BROKEN_VERSION, serve=False))
    bot = {"INFERENCE_URL": torchserve.inference_url, "INFERENCE_TOKEN": "", "INFERENCE_TOKEN_FILE": str(torchserve.key_file),
           "INFERENCE_TIMEOUT": "60", "PERSONA": PERSONA, "PERSONAS": f"{PERSONA},{OTHER_PERSONA}"}
    try:
        async with running_bot(**bot) as service:
            port = torchserve.options.metrics_port
            prometheus.scrape({"torchserve": [f"127.0.0.1:{port}"], "bot": [f"127.0.0.1:{service.metrics_port}"]})
            for job in ("torchserve", "bot"):
                up = await asyncio.to_thread(prometheus.wait_for, f'up{{job="{job}"}} == 1')
                assert up, f"Prometheus never scraped {job}"
            await load(torchserve, telegram)
            await asyncio.sleep(2.5)  # the last round's samples are scraped
            await asyncio.to_thread(check_dashboards, prometheus)
    finally:
        update_routing(torchserve.model_store, initial_routing)


def check_dashboards(prometheus) -> None:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"}
        values = {name: label_values(prometheus, query) for name, query in variables.items()}
        assert "fleet" in values["model"]
        assert {PERSONA, OTHER_PERSONA} <= values["persona"]
        empty = []
        for row, panel in panels_by_row(dashboard):
            for target in panel["targets"]:
                result = prometheus.query(grafana_expr(target["expr"]))  # a PromQL error fails here
                if row.startswith(ROWS_WITH_DATA) and not result and not any(m in target["expr"] for m in MAY_STAY_EMPTY):
                    empty.append(f"{row} / {panel['title']}: {target['expr']}")
        assert not empty, "no data:\n" + "\n".join(empty)
        per_persona = prometheus.query(grafana_expr(
            'sum by (persona, version) (rate(persona_handler_requests_total{persona=~"$persona"}[$__rate_interval]))'))
        rates = {(r["metric"]["persona"], r["metric"]["version"]): float(r["value"][1]) for r in per_persona}
        assert rates[(PERSONA, "1")] > 0 and rates[(OTHER_PERSONA, "1")] > 0 and rates[(PERSONA, "2")] > 0
        failing = prometheus.query('sum by (persona, version, reason) (persona_handler_errors_total{version!="none"})')
        assert {(r["metric"]["persona"], r["metric"]["version"], r["metric"]["reason"]) for r in failing} \
            >= {(PERSONA, str(BROKEN_VERSION), "adapter_unavailable")}


def label_values(prometheus, query: str) -> set[str]:
    """Grafana's `label_values(metric, label)`, asked of Prometheus's series API as Grafana does."""
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query).groups()
    answer = httpx.get(f"{prometheus.url}/api/v1/series", params={"match[]": metric}, timeout=10).json()
    assert answer["status"] == "success", answer
    return {series[label] for series in answer["data"] if label in series}
