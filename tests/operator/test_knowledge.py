"""The PersonaModel's `knowledge` section (issue 14): into the training Job, or a status naming
the files that are missing (and no Job that is bound to fail)."""

from __future__ import annotations

import pytest

from persona_operator import reconcile
from persona_operator.jobs import training_config, training_job
from persona_operator.spec import PersonaModelSpec
from persona_training.config import TrainConfig
from personafleet.errors import PersonaError
from tests.operator.harness import eventually, persona_model
from tests.operator.test_jobs import DEFAULTS, OWNER, build, commands

KNOWLEDGE = {"facts": ["Живу в Казани"], "files": ["alice/facts.md", "shared/devops.md"]}


def test_inline_facts_ride_in_train_yaml_and_files_are_knowledge_flags():
    spec = PersonaModelSpec.parse(persona_model(knowledge=KNOWLEDGE)["spec"])
    config = TrainConfig.model_validate(training_config("alice", spec))
    assert config.knowledge.facts == ["Живу в Казани"] and config.knowledge.files == []
    train = next(c for c in commands(build(knowledge=KNOWLEDGE)) if c[1] == "train")
    flags = [train[i + 1] for i, arg in enumerate(train) if arg == "--knowledge"]
    assert flags == [f"{DEFAULTS.store_path}/alice/facts.md", f"{DEFAULTS.store_path}/shared/devops.md"]


def test_no_knowledge_changes_nothing():
    spec = PersonaModelSpec.parse(persona_model()["spec"])
    assert "knowledge" not in training_config("alice", spec)
    assert "--knowledge" not in training_job(OWNER, spec, 1, DEFAULTS)["spec"]["template"]["spec"]["containers"][0]["command"][2]
    files_only = PersonaModelSpec.parse(persona_model(knowledge={"files": ["a.md"]})["spec"])
    assert "knowledge" not in training_config("alice", files_only)


@pytest.mark.parametrize("path", ["/etc/passwd", "../other/facts.md", "alice/../../x.md"])
def test_knowledge_files_must_stay_inside_the_model_store(path):
    with pytest.raises(PersonaError, match=r"spec\.knowledge\.files.*inside the model store"):
        PersonaModelSpec.parse(persona_model(knowledge={"files": [path]})["spec"])


async def test_missing_knowledge_files_are_named_in_the_status_and_no_job_starts_until_they_exist(
        cluster, operator, monkeypatch):
    monkeypatch.setattr(reconcile, "KNOWLEDGE_POLL_SECONDS", 0.5)
    (cluster.store / "alice").mkdir(parents=True)
    (cluster.store / "alice" / "facts.md").write_text("- Живу в Казани\n", encoding="utf-8")
    cluster.apply(persona_model("alice", knowledge=KNOWLEDGE))
    status = await eventually(lambda: cluster.status("alice").get("phase") == "Failed" and cluster.status("alice"))
    assert "shared/devops.md" in status["message"] and "alice/facts.md" not in status["message"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Trained"] == "KnowledgeMissing"
    await eventually(lambda: cluster.events("KnowledgeMissing"))
    assert cluster.jobs("alice") == []

    (cluster.store / "shared").mkdir()
    (cluster.store / "shared" / "devops.md").write_text("- Пишу на Go\n", encoding="utf-8")
    jobs = await eventually(lambda: cluster.jobs("alice"))
    assert [j["metadata"]["name"] for j in jobs] == ["alice-v1"]
    await eventually(lambda: cluster.status("alice").get("phase") == "Training")


def test_the_status_counts_the_facts_of_the_serving_versions_folder(tmp_path):
    import logging

    from personafleet.knowledge import build_knowledge, save

    reconciler = reconcile.Reconciler(DEFAULTS.model_copy(update={"store_path": tmp_path}), cluster=None, rollout=None)
    (tmp_path / "alice" / "v2").mkdir(parents=True)
    save(build_knowledge([], ["Живу в Казани", "Пишу на Go"]), tmp_path / "alice" / "v2")
    (tmp_path / "alice" / "v3").mkdir()
    (tmp_path / "alice" / "v3" / "knowledge.json").write_text("{broken", encoding="utf-8")
    log = logging.getLogger("test")
    assert [reconciler._facts("alice", v, log) for v in (1, 2, 3)] == [0, 2, 0]
