"""The front's admission rules without a server: raw paths (persona_serving.routes).
tests/serving/test_front.py checks them against a running pod."""

import pytest

from persona_serving.routes import admit


@pytest.mark.parametrize(("listener", "method", "path"), [
    ("inference", "GET", "/ping"),
    ("inference", "POST", "/predictions/devops-dude"),
    ("inference", "POST", "/predictions/fleet/3?x=1"),
    ("management", "GET", "/models?limit=100&next_page_token=x"),
    ("management", "GET", "/models/fleet"),
    ("management", "GET", "/models/fleet/all"),
])
def test_the_routes_clients_use_are_admitted_unchanged(listener, method, path):
    admitted = admit(listener, method, path)
    assert admitted.refused is None and admitted.path == path.split("?")[0]


@pytest.mark.parametrize("path", [
    "/predictions/..%2Fapi-description", "/./token", "/x/../token", "/%2e/token", "/%2E/token",
    "/predictions/devops-dude%2F..", "/predictions/./devops-dude", "/predictions/devops-dude/..", "/ping/.",
    "/predictions\\..\\api-description",
])
@pytest.mark.parametrize("listener", ["inference", "management"])
def test_dot_segments_and_escapes_are_refused_before_any_route(listener, path):
    assert admit(listener, "POST", path).refused[:2] == (400, "invalid_path")


@pytest.mark.parametrize(("listener", "method", "path"), [
    ("inference", "GET", "/token"), ("inference", "POST", "/explanations/devops-dude"),
    ("inference", "GET", "/api-description"), ("inference", "OPTIONS", "/"), ("inference", "POST", "/ping"),
    ("inference", "POST", "/predictions/a/1/extra"), ("inference", "POST", "/predictions/.hidden"),
    ("inference", "POST", "/predictions/devops-dude/"), ("inference", "GET", "/models"),
    ("management", "GET", "/token"), ("management", "POST", "/workflows"), ("management", "PUT", "/models/x"),
    ("management", "POST", "/predictions/devops-dude"), ("management", "GET", "/models/"),
    # the models are loaded at start: registering, unregistering, scaling and switching are nobody's
    ("management", "POST", "/models?url=fleet.mar"), ("management", "DELETE", "/models/fleet/1"),
    ("management", "PUT", "/models/fleet?min_worker=3"), ("management", "PUT", "/models/fleet/1/set-default"),
])
def test_everything_else_is_not_found(listener, method, path):
    assert admit(listener, method, path).refused[:2] == (404, "not_found")
