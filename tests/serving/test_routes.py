"""The front's admission rules without a server: raw paths (persona_serving.routes) and model
sources (persona_serving.store). tests/serving/test_front.py checks both against a running pod."""

import pytest

from persona_serving.routes import admit
from persona_serving.store import SOURCE_RULE, stage
from personafleet.errors import PersonaError


@pytest.mark.parametrize(("listener", "method", "path"), [
    ("inference", "GET", "/ping"),
    ("inference", "POST", "/predictions/devops-dude"),
    ("inference", "POST", "/predictions/fleet/3?x=1"),
    ("management", "GET", "/models?limit=100&next_page_token=x"),
    ("management", "POST", "/models?url=devops-dude/v2/devops-dude.mar&synchronous=true"),
    ("management", "GET", "/models/devops-dude/all"),
    ("management", "PUT", "/models/devops-dude/2/set-default"),
    ("management", "DELETE", "/models/devops-dude/2"),
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
])
def test_everything_else_is_not_found(listener, method, path):
    assert admit(listener, method, path).refused[:2] == (404, "not_found")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/evil.mar", "https://example.org/evil.mar", "file:///elsewhere/evil.mar",
    "FILE:/elsewhere/evil.mar", "/elsewhere/evil.mar", "/elsewhere/unpacked", "../evil.mar",
    "devops-dude/../../evil.mar", "devops-dude\\..\\..\\evil.mar", "", "s3://bucket/evil.mar",
])
def test_only_the_store_is_a_model_source(tmp_path, url):
    with pytest.raises(PersonaError, match="refused") as refused:
        stage(tmp_path / "store", url, tmp_path / "links")
    assert SOURCE_RULE in str(refused.value)


def test_a_link_out_of_the_store_is_refused(tmp_path):
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    (elsewhere / "v1").mkdir(parents=True)
    (elsewhere / "v1" / "evil.mar").write_bytes(b"PK")
    store.mkdir()
    (store / "evil").symlink_to(elsewhere)
    with pytest.raises(PersonaError, match="refused"):
        stage(store, "evil/v1/evil.mar", tmp_path / "links")
