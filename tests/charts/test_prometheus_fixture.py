"""The real Prometheus the dashboard, alert and canary tests rely on: it scrapes a live endpoint,
answers PromQL with the scraped value, and reports a bad expression as an error (never as no data)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server


def test_prometheus_scrapes_a_live_endpoint_and_evaluates_promql(prometheus):
    registry = CollectorRegistry()
    replies = Counter("fixture_replies_total", "replies", ["persona"], registry=registry)
    replies.labels("devops-dude").inc(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        prometheus.scrape({"fixture": [f"127.0.0.1:{server.server_port}"]})
        result = prometheus.wait_for('fixture_replies_total{persona="devops-dude"}')
        assert [float(r["value"][1]) for r in result] == [3.0]
        assert prometheus.query('up{job="fixture"}')[0]["value"][1] == "1"
        with pytest.raises(AssertionError, match="bad_data"):
            prometheus.query("sum(rate(fixture_replies_total[1m])")
    finally:
        server.shutdown()
        thread.join()
