"""The canary's rules without a cluster: the spec, the analysis (against a real Prometheus scraping
live counters) and the judgment, and each state's next move."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from persona_operator.analysis import (
    ANALYSIS_FAILED, ANALYSIS_PASSED, AWAITING_DATA, METRICS_UNAVAILABLE, Measurement, judge, measure,
)
from persona_operator.canary import TIMED_OUT, CanaryState, next_move
from persona_operator.rollout import check_key, route_of
from persona_operator.spec import AnalysisSection, CanarySection, PersonaModelSpec
from personafleet.errors import PersonaError
from personafleet.routing import RoutingTable, choose_version
from tests.fixtures.torchserve import free_port
from tests.operator.harness import persona_model

START = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
ANALYSIS = AnalysisSection(min_ratings=10, min_requests=20, min_like_ratio=0.6, max_error_rate=0.1)


def spec(**canary) -> PersonaModelSpec:
    return PersonaModelSpec.parse(persona_model(rollout={"strategy": "Canary", "canary": canary})["spec"])


# ---- the spec -------------------------------------------------------------------------------------
def test_immediate_stays_the_default_and_a_canary_has_sensible_defaults():
    plain = PersonaModelSpec.parse(persona_model()["spec"])
    assert plain.rollout.strategy == "Immediate"
    canary = spec().rollout.canary
    assert canary.steps == [10, 50] and canary.min_step_seconds == 600
    assert (canary.analysis.min_ratings, canary.analysis.min_like_ratio) == (20, 0.5)


@pytest.mark.parametrize("steps", [[50, 10], [10, 10], [0, 50], [10, 101]])
def test_steps_must_be_increasing_percentages(steps):
    with pytest.raises(PersonaError, match="increasing percentages"):
        spec(steps=steps)


def test_a_final_100_is_the_promotion_itself():
    assert spec(steps=[5, 25, 100]).rollout.canary.steps == [5, 25]
    assert spec(steps=[100]).rollout.canary.steps == [100]  # all conversations, judged, then promoted


def test_a_query_template_may_use_only_the_known_placeholders():
    ok = spec(analysis={"queries": {"likeRatio": 'my_ratio{persona="$persona",version="$version"}[$window]'}})
    assert ok.rollout.canary.analysis.queries.like_ratio.startswith("my_ratio")
    with pytest.raises(PersonaError, match=r"\$persona, \$version and \$window only"):
        spec(analysis={"queries": {"ratings": 'sum(x{chat="$chat"})'}})


def test_a_canary_needs_a_prometheus():
    spec().check_canary("http://prometheus:9090")
    with pytest.raises(PersonaError, match="operator.prometheusUrl"):
        spec().check_canary(None)
    PersonaModelSpec.parse(persona_model()["spec"]).check_canary(None)  # Immediate needs none


# ---- the judgment ---------------------------------------------------------------------------------
def measured(ratings=30.0, like_ratio=0.8, requests=100.0, error_rate=0.0) -> Measurement:
    return Measurement(ratings=ratings, like_ratio=like_ratio, requests=requests, error_rate=error_rate)


def test_enough_good_data_passes():
    judgment = judge(measured(), ANALYSIS)
    assert (judgment.outcome, judgment.reason) == ("pass", ANALYSIS_PASSED)
    assert "👍 share 0.80 over 30 ratings" in judgment.message


def test_a_disliked_version_fails_as_soon_as_its_ratings_count():
    assert judge(measured(ratings=9, like_ratio=0.0), ANALYSIS).outcome == "wait"
    judgment = judge(measured(ratings=10, like_ratio=0.3, requests=5), ANALYSIS)  # requests still too few
    assert (judgment.outcome, judgment.reason) == ("fail", ANALYSIS_FAILED) and "below 0.6" in judgment.message


def test_a_failing_version_fails_on_its_error_rate():
    judgment = judge(measured(ratings=0, like_ratio=None, error_rate=0.25), ANALYSIS)
    assert judgment.outcome == "fail" and "error rate 0.250 over 100 requests is above 0.1" in judgment.message


def test_too_few_ratings_or_requests_wait_and_missing_data_never_passes():
    judgment = judge(measured(ratings=3, requests=200), ANALYSIS)
    assert (judgment.outcome, judgment.reason) == ("wait", AWAITING_DATA) and "3/10 ratings" in judgment.message
    judgment = judge(Measurement(problem="ratings: no data"), ANALYSIS)
    assert (judgment.outcome, judgment.reason) == ("wait", METRICS_UNAVAILABLE)


# ---- the moves ------------------------------------------------------------------------------------
CANARY = CanarySection(steps=[10, 50], min_step_seconds=60, analysis=ANALYSIS.model_copy(update={"timeout_seconds": 120}))


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_a_step_advances_only_after_its_minimum_time_and_then_promotes():
    state = CanaryState.first(5, 4, CANARY, START)
    assert (state.weight, state.weights) == (10, {4: 90, 5: 10})
    passing = judge(measured(), ANALYSIS)
    early = next_move(state, passing, CANARY, at(20))
    assert (early.action, early.after) == ("wait", 30)  # the analysis interval, within the 40 s left
    assert next_move(state, passing, CANARY, at(60)).action == "advance"
    second = state.next(CANARY, at(60))
    assert (second.step, second.weight, second.started_at) == (2, 50, at(60))
    promoting = second.next(CANARY, at(130))
    assert promoting.promoting and promoting.weight == 100 and "being promoted" in promoting.describe()


def test_a_failed_analysis_rolls_back_at_once_and_missing_data_only_after_the_timeout():
    state = CanaryState.first(5, 4, CANARY, START)
    failing = judge(measured(like_ratio=0.1), ANALYSIS)
    assert next_move(state, failing, CANARY, at(1)).action == "rollback"
    missing = judge(Measurement(problem="Prometheus unreachable"), ANALYSIS)
    assert next_move(state, missing, CANARY, at(179)).action == "wait"
    move = next_move(state, missing, CANARY, at(180))  # minimum time + timeout
    assert (move.action, move.reason) == ("rollback", TIMED_OUT) and "Prometheus unreachable" in move.message


def test_the_status_round_trips_and_replaces_every_field():
    state = CanaryState.first(5, 4, CANARY, START)
    status = state.status()
    assert status["weights"] == [{"version": "4", "weight": 90}, {"version": "5", "weight": 10}]
    assert status["analysis"] is None  # a merge patch removes the previous canary's analysis
    assert CanaryState.from_status(status) == state


# ---- the measurement, from a real Prometheus ------------------------------------------------------
@pytest.fixture
def counters(prometheus):
    """The bot's and serving's counters (contract 3 names and labels) on a live endpoint Prometheus scrapes."""
    registry = CollectorRegistry()
    votes = Counter("persona_bot_feedback_votes_total", "votes", ["persona", "version", "outcome"], registry=registry)
    requests = Counter("persona_handler_requests_total", "requests", ["persona", "version"], registry=registry)
    errors = Counter("persona_handler_errors_total", "errors", ["persona", "version", "reason"], registry=registry)
    for outcome in ("up", "down"):
        votes.labels("alice", "5", outcome)
    requests.labels("alice", "5")
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    prometheus.scrape({"bot": [f"127.0.0.1:{server.server_port}"]})
    prometheus.wait_for('persona_bot_feedback_votes_total{version="5"}')
    time.sleep(2.5)  # increase() needs two samples of a series
    yield votes, requests, errors
    server.shutdown()
    thread.join()


async def test_the_measurement_counts_the_canary_versions_ratings_and_errors(prometheus, counters):
    votes, requests, errors = counters
    async with httpx.AsyncClient() as http:
        before = await measure(http, prometheus.url, AnalysisSection().queries, "alice", 5, 30)
    assert before == Measurement(ratings=0.0, like_ratio=None, requests=0.0, error_rate=None)  # 0/0 is no judgment yet

    votes.labels("alice", "5", "up").inc(6)
    votes.labels("alice", "5", "down").inc(2)
    votes.labels("alice", "4", "down").inc(50)  # the other version's ratings do not count
    requests.labels("alice", "5").inc(40)
    errors.labels("alice", "5", "generation_failed").inc(4)
    time.sleep(2.5)  # two scrapes
    async with httpx.AsyncClient() as http:
        after = await measure(http, prometheus.url, AnalysisSection().queries, "alice", 5, 30)
    assert after.problem is None
    assert after.like_ratio == pytest.approx(0.75) and after.error_rate == pytest.approx(0.1)
    assert after.ratings == pytest.approx(8, rel=0.3) and after.requests == pytest.approx(40, rel=0.3)  # increase() extrapolates


async def test_missing_data_is_a_problem_never_a_number(prometheus, counters):
    queries = AnalysisSection().queries
    async with httpx.AsyncClient() as http:
        unknown = await measure(http, prometheus.url, queries, "alice", 9, 30)  # no series of version 9
        refused = await measure(http, prometheus.url, queries.model_copy(update={"ratings": "sum(rate(x[1m])"}),
                                "alice", 5, 30)
        unreachable = await measure(http, f"http://127.0.0.1:{free_port()}", queries, "alice", 5, 30)
    assert unknown.problem == "ratings: no data (the query answered nothing)"
    assert refused.problem.startswith("ratings: Prometheus refused the query (bad_data")
    assert unreachable.problem.startswith("ratings: Prometheus at http://127.0.0.1:") and "unreachable" in unreachable.problem
    assert all(judge(m, ANALYSIS).outcome == "wait" for m in (unknown, refused, unreachable))


# ---- the routing table a step wants ------------------------------------------------------------
def test_a_step_puts_its_route_back_whatever_the_table_says_and_its_check_proves_the_new_weights():
    table = RoutingTable()
    table.add("alice", 5, serve=True)  # edited by hand: the canary serving everyone
    route = route_of(table, "alice", 5, 4, {4: 90, 5: 10})
    assert (route.serving, route.versions, route.weights) == (4, [4, 5], {4: 90, 5: 10})
    grown = route_of(table.model_copy(deep=True), "alice", 5, 4, {4: 50, 5: 50})
    key = check_key(route, grown, 5)
    assert choose_version(grown, key) == 5 and choose_version(route, key) == 4  # only the new weights send it to v5
    assert choose_version(route, check_key(None, route, 5)) == 5
