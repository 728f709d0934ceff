"""Per-persona serving metrics (contract 3): the one bounding rule, and the labels the real handler
records through TorchServe's own metrics cache (which refuses a label set that does not match
the declared dimensions)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from persona_serving.metrics import HANDLER_METRICS, NO_VERSION, OTHER_PERSONA, persona_label, version_label
from personafleet.routing import RoutingTable, read_routing, update_routing


def table(*personas: str) -> RoutingTable:
    routes = RoutingTable()
    for persona in personas:
        routes.add(persona, 1, serve=True)
    return routes


def test_the_first_personas_of_the_table_keep_their_name_and_the_rest_are_other():
    routes = table("a", "b", "c")
    assert [persona_label(p, routes, 2) for p in ("a", "b", "c")] == ["a", "b", OTHER_PERSONA]
    assert [persona_label(p, routes, 0) for p in ("a", "b")] == [OTHER_PERSONA, OTHER_PERSONA]
    assert persona_label("c", routes, 100) == "c"


def test_names_no_version_serves_never_become_a_label():
    routes = table("a")
    assert persona_label("made-up-by-a-client", routes, 100) == OTHER_PERSONA
    assert persona_label(None, routes, 100) == OTHER_PERSONA


def test_a_newly_routed_persona_takes_no_label_away(tmp_path):
    """Table order survives the file: the persona routed last is the one beyond the cap."""
    update_routing(tmp_path, lambda t: [t.add(p, 1, serve=True) for p in ("zeta", "alpha")])
    update_routing(tmp_path, lambda t: t.add("beta", 1, serve=True))
    routes = read_routing(tmp_path)
    assert [persona_label(p, routes, 2) for p in ("zeta", "alpha", "beta")] == ["zeta", "alpha", OTHER_PERSONA]


def test_version_labels():
    assert (version_label(3), version_label(None)) == ("3", NO_VERSION)


def test_the_contract_names_carry_persona_and_version():
    dimensions = {spec.name: spec.dimensions for spec in HANDLER_METRICS}
    for name in ("persona_handler_requests_total", "persona_handler_generation_seconds",
                 "persona_handler_generated_tokens_total"):
        assert dimensions[name] == ("model_name", "model_version", "persona", "version")
    assert dimensions["persona_handler_errors_total"] == ("model_name", "model_version", "persona", "version", "reason")


def test_persona_serve_hands_its_cap_to_the_workers(tmp_path):
    from persona_serving.server import ServeOptions, fleet_config

    assert fleet_config(ServeOptions(model_store=tmp_path, max_persona_labels=3), "t5").max_persona_labels == 3
    assert fleet_config(ServeOptions(model_store=tmp_path), "t5").max_persona_labels == 100


def recorded(caplog, name: str) -> list[tuple[dict[str, str], float]]:
    """(dimensions, value) of each `[METRICS]` line TorchServe's metrics cache logged for `name`."""
    found = []
    for record in caplog.records:
        line = record.getMessage()
        if line.startswith(f"[METRICS]{name}."):
            value, dims = line.split(":", 1)[1].split("|#")[:2]
            found.append((dict(d.split(":", 1) for d in dims.split(",")), float(value)))
    return found


@pytest.mark.slow
def test_the_handler_labels_every_request_with_its_bounded_persona_and_version(fleet_store, tiny_base, tmp_path, caplog):
    """Cap 1 over a table of devops-dude then pm-life: pm-life counts as "other"; refusals before
    routing have version "none"; a made-up persona is "other"."""
    from ts.context import Context, RequestProcessor
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    from persona_serving.config import SERVING_FILE, FleetConfig
    from persona_serving.handler import FleetHandler
    from persona_serving.metrics import write_metrics_config

    assert list(read_routing(fleet_store).personas) == ["devops-dude", "pm-life"]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config = FleetConfig(base=str(tiny_base), model_store=str(fleet_store), max_persona_labels=1)
    (model_dir / SERVING_FILE).write_text(config.model_dump_json())
    metrics = MetricsCacheYamlImpl(str(write_metrics_config(Path(tmp_path / "metrics.yaml"))))
    metrics.initialize_cache()
    context = Context("fleet", str(model_dir), {"model": {"modelVersion": "4"}}, 8, None, "0.12", metrics=metrics)
    handler = FleetHandler()
    handler.initialize(context)
    greedy = {"max_new_tokens": 3, "do_sample": False}
    batch = [
        {"body": {"persona": "devops-dude", "message": "привет", "generation": greedy}},
        {"body": {"persona": "pm-life", "message": "привет", "generation": greedy}},
        {"body": {"persona": "devops-dude", "message": "а ты?", "generation": greedy, "version": 2}},
        {"body": {"persona": "someone-else", "message": "hi"}},
        {"body": {"persona": "devops-dude", "message": "hi", "version": 7}},
        {"body": b"{not json"},
    ]
    context.request_processor = [RequestProcessor({}) for _ in batch]
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        handler.handle(batch, context)

    def labels(name: str) -> list[tuple]:
        return sorted((d["persona"], d["version"], d.get("reason", "")) for d, _ in recorded(caplog, name))

    assert labels("persona_handler_requests_total") == [("devops-dude", "1", ""), ("devops-dude", "2", ""), ("other", "1", "")]
    assert labels("persona_handler_generation_seconds") == labels("persona_handler_requests_total")
    assert labels("persona_handler_errors_total") == [
        ("devops-dude", "none", "unknown_version"), ("other", "none", "invalid_json"), ("other", "none", "unknown_persona"),
    ]
    tokens = recorded(caplog, "persona_handler_generated_tokens_total")
    assert {(d["persona"], d["version"]) for d, _ in tokens} == {("devops-dude", "1"), ("devops-dude", "2"), ("other", "1")}
    assert all(value >= 1 and d["model_name"] == "fleet" and d["model_version"] == "4" for d, value in tokens)
