"""A canary step's analysis: what the people talking to the new version think of it, and how often
serving fails it, measured by Prometheus (issue 23).

Four numbers per step, each one PromQL query over the canary version since the step began:
`ratings` and `likeRatio` from the bot's `persona_bot_feedback_votes_total{persona,version,outcome}`
(users pressing 👍/👎), `requests` and `errorRate` from the handler's
`persona_handler_requests_total{persona,version}` and `persona_handler_errors_total{persona,version}`
(contract 3 of the helpers' brief: the per-version serving metrics). A PersonaModel may replace any
query with its own template (`$persona`, `$version`, `$window`).

Missing data is never a pass: Prometheus unreachable, an error, an empty answer or NaN make the
step wait (and, past its timeout, roll back). Counters are read with `increase()` over the step's
window, so a bot or serving restart (a counter reset) does not lose or invent ratings.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from string import Template
from typing import Literal

import httpx

from persona_operator.spec import AnalysisQueries, AnalysisSection

QUERY_TIMEOUT_SECONDS = 10.0

_VOTES = 'persona_bot_feedback_votes_total{persona="$persona",version="$version",outcome=~"up|down"}'
_UPS = 'persona_bot_feedback_votes_total{persona="$persona",version="$version",outcome="up"}'
_REQUESTS = 'persona_handler_requests_total{persona="$persona",version="$version"}'
_ERRORS = 'persona_handler_errors_total{persona="$persona",version="$version"}'


def in_window(series: str) -> str:
    """PromQL for how much the counters `series` grew during the window. `increase()` alone misses
    what a series counted before its first scrape (a new version's first errors of a reason: the
    series is born at 1), so series born within the window count whole; the others by increase()."""
    return f"sum((increase({series}[$window]) and {series} offset $window) or ({series} unless {series} offset $window))"


# `or vector(0)`: a version nobody rated up, or that never failed, has no such series at all.
DEFAULT_QUERIES: dict[str, str] = {
    "ratings": in_window(_VOTES),
    "like_ratio": f"({in_window(_UPS)} or vector(0)) / {in_window(_VOTES)}",
    "requests": in_window(_REQUESTS),
    "error_rate": f"({in_window(_ERRORS)} or vector(0)) / {in_window(_REQUESTS)}",
}
RATIO_OF = {"like_ratio": "ratings", "error_rate": "requests"}  # a ratio and the count it divides by

# Condition reasons of a step's analysis (status condition `Canary`).
ANALYSIS_PASSED = "AnalysisPassed"
ANALYSIS_FAILED = "AnalysisFailed"
AWAITING_DATA = "AwaitingData"  # fewer ratings or requests than the minimum so far
METRICS_UNAVAILABLE = "MetricsUnavailable"  # Prometheus unreachable, an error, an empty answer


@dataclass(frozen=True)
class Measurement:
    """The step's four numbers; `problem` says why they could not all be had (then none is used)."""

    ratings: float | None = None
    like_ratio: float | None = None
    requests: float | None = None
    error_rate: float | None = None
    problem: str | None = None

    def status(self) -> dict[str, float | None]:
        """The values as `status.canary.analysis` shows them (camelCase, rounded for people)."""
        values = {"ratings": self.ratings, "likeRatio": self.like_ratio, "requests": self.requests,
                  "errorRate": self.error_rate}
        return {key: None if value is None else round(value, 4) for key, value in values.items()}


@dataclass(frozen=True)
class Judgment:
    outcome: Literal["pass", "fail", "wait"]
    reason: str
    message: str


def render(template: str, persona: str, version: int, window_seconds: float) -> str:
    """A query with its placeholders filled; the window is whole seconds, at least one."""
    return Template(template).substitute(persona=persona, version=str(version),
                                         window=f"{max(1, math.ceil(window_seconds))}s")


async def measure(http: httpx.AsyncClient, prometheus_url: str, queries: AnalysisQueries, persona: str,
                  version: int, window_seconds: float) -> Measurement:
    """Ask Prometheus the step's four queries at once."""
    names = list(DEFAULT_QUERIES)
    texts = [render(getattr(queries, name) or DEFAULT_QUERIES[name], persona, version, window_seconds) for name in names]
    answers = dict(zip(names, await asyncio.gather(*(_scalar(http, prometheus_url, t) for t in texts)), strict=True))
    for ratio, count in RATIO_OF.items():
        if isinstance(answers[ratio], str) and not isinstance(answers[count], str) and answers[count] == 0:
            answers[ratio] = None  # 0/0: nothing to judge yet, not missing data
    for name, answer in answers.items():
        if isinstance(answer, str):
            return Measurement(problem=f"{name}: {answer}")
    return Measurement(**answers)  # type: ignore[arg-type]


async def _scalar(http: httpx.AsyncClient, prometheus_url: str, query: str) -> float | str:
    """The one number an instant query answers, or why there is none."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/query"
    try:
        response = await http.get(url, params={"query": query}, timeout=QUERY_TIMEOUT_SECONDS)
        body = response.json()
    except httpx.HTTPError as exc:
        return f"Prometheus at {prometheus_url} unreachable ({exc.__class__.__name__}: {exc})".replace(" ()", "")
    except ValueError:
        return f"Prometheus answered HTTP {response.status_code} without JSON"
    if body.get("status") != "success":
        return f"Prometheus refused the query ({body.get('errorType')}: {body.get('error')})"
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    if not result:
        return "no data (the query answered nothing)"
    if len(result) > 1:
        return f"the query answered {len(result)} series, not one number (aggregate it, e.g. with sum())"
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return f"an answer that is not a number: {str(result[0])[:200]}"
    return value if math.isfinite(value) else f"no data (the query answered {value})"


def judge(measurement: Measurement, analysis: AnalysisSection) -> Judgment:
    """Fail as soon as either signal has enough data and is bad; pass only when both have enough and
    are good; wait otherwise. Missing data never passes."""
    if measurement.problem is not None:
        return Judgment("wait", METRICS_UNAVAILABLE, measurement.problem)
    ratings, requests = measurement.ratings or 0.0, measurement.requests or 0.0
    like_ratio, error_rate = measurement.like_ratio, measurement.error_rate
    liked = f"👍 share {like_ratio:.2f} over {ratings:.0f} ratings" if like_ratio is not None else "no ratings"
    errors = f"error rate {error_rate:.3f} over {requests:.0f} requests" if error_rate is not None else "no requests"
    if error_rate is not None and requests >= analysis.min_requests and error_rate > analysis.max_error_rate:
        return Judgment("fail", ANALYSIS_FAILED, f"{errors} is above {analysis.max_error_rate:g}")
    if like_ratio is not None and ratings >= analysis.min_ratings and like_ratio < analysis.min_like_ratio:
        return Judgment("fail", ANALYSIS_FAILED, f"{liked} is below {analysis.min_like_ratio:g}")
    if ratings < analysis.min_ratings or requests < analysis.min_requests:
        return Judgment("wait", AWAITING_DATA, f"{ratings:.0f}/{analysis.min_ratings} ratings, "
                                               f"{requests:.0f}/{analysis.min_requests} requests so far")
    return Judgment("pass", ANALYSIS_PASSED, f"{liked} (at least {analysis.min_like_ratio:g}), "
                                             f"{errors} (at most {analysis.max_error_rate:g})")
