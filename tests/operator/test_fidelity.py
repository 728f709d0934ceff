"""Issue 24 in the operator: the rollout gate reads the fidelity block of a version's report (kopf
against the fake API server, the version published by the real `persona package` code; a refused
version never reaches the routing table, so no serving replica is needed), and a persona's reply
filter travels from the spec into the Job's train.yaml, or is refused as an invalid spec."""

from __future__ import annotations

import pytest

from persona_operator.jobs import training_config
from persona_operator.spec import PersonaModelSpec
from persona_training.config import TrainConfig
from personafleet.errors import PersonaError
from personafleet.routing import read_routing
from tests.operator.harness import eventually, persona_model, place_version


async def finish_training(cluster, tiny_run, persona: str, version: int, **fidelity) -> dict:
    """Play the Job controller: version `version` into the store with these fidelity figures, the Job
    succeeded; returns the status once the gate has judged it."""
    job = await eventually(lambda: [j for j in cluster.jobs(persona) if j["metadata"]["name"] == f"{persona}-v{version}"])
    place_version(cluster.store, tiny_run, persona, version, loss=2.0, fidelity=fidelity)
    cluster.finish_job(job[0], succeeded=True)
    return await eventually(lambda: cluster.status(persona).get("lastTraining", {}).get("version") == str(version)
                            and cluster.status(persona).get("phase") == "Failed" and cluster.status(persona))


async def test_a_version_that_does_not_sound_like_the_persona_or_leaks_is_not_rolled_out(cluster, operator, tiny_run):
    cluster.apply(persona_model("pm-faithful", rollout={"retryLimit": 0, "minFidelity": 0.5}))
    status = await finish_training(cluster, tiny_run, "pm-faithful", 1, score=0.2, leaks={"count": 0})
    rolled_out = next(c for c in status["conditions"] if c["type"] == "RolledOut")
    assert rolled_out["reason"] == "GateRejected" and rolled_out["message"] == "fidelity 0.20 is below minFidelity 0.50"
    assert "version 1 not rolled out: fidelity 0.20" in status["message"]
    assert status["lastTraining"]["fidelity"] == 0.2 and status["lastTraining"]["leaks"] == 0
    assert "pm-faithful" not in read_routing(cluster.store).personas
    await eventually(lambda: any("minFidelity" in e.get("message", "") for e in cluster.events("GateRejected")))

    # Faithful enough now, but it hands out a phone number from the chat: maxLeaks (0) refuses it.
    cluster.apply(persona_model("pm-faithful", training={"loraRank": 4}, rollout={"retryLimit": 0, "minFidelity": 0.5}))
    status = await finish_training(cluster, tiny_run, "pm-faithful", 2, score=0.8, leaks={"count": 2})
    rolled_out = next(c for c in status["conditions"] if c["type"] == "RolledOut")
    assert rolled_out["reason"] == "GateRejected" and "2 generated replies leak personal data" in rolled_out["message"]
    assert "maxLeaks 0" in rolled_out["message"] and status["lastTraining"]["leaks"] == 2
    assert "pm-faithful" not in read_routing(cluster.store).personas


async def test_a_required_fidelity_that_was_never_measured_refuses_the_version(cluster, operator, tiny_run):
    cluster.apply(persona_model("pm-unjudged", rollout={"retryLimit": 0, "minFidelity": 0.3}))
    status = await finish_training(cluster, tiny_run, "pm-unjudged", 1, skipped="only 12 held-out replies")
    rolled_out = next(c for c in status["conditions"] if c["type"] == "RolledOut")
    assert rolled_out["reason"] == "GateRejected" and "fidelity is required" in rolled_out["message"]
    assert "only 12 held-out replies" in rolled_out["message"] and "fidelity" not in status["lastTraining"]


def test_a_persona_reply_filter_reaches_train_yaml_and_a_bad_pattern_is_an_invalid_spec():
    reply_filter = {"blocklist": ["дурак"], "patterns": [{"name": "money", "regex": r"\d+ ?руб"}], "pii": ["phone"],
                    "fallback": "Не скажу."}
    spec = PersonaModelSpec.parse(persona_model("pm-filter", serving={"replyFilter": reply_filter})["spec"])
    config = TrainConfig.model_validate(training_config("pm-filter", spec))  # what `persona train --config` reads
    assert config.persona.reply_filter.model_dump(exclude_none=True) == reply_filter
    broken = persona_model("pm-filter", serving={"replyFilter": {"patterns": [{"name": "money", "regex": "(руб"}]}})
    with pytest.raises(PersonaError, match="spec.serving.replyFilter.patterns.0: .*rule 'money': invalid regular expression"):
        PersonaModelSpec.parse(broken["spec"])
