"""Facts flow CLI/train.yaml -> training prompts -> run dir -> version folder -> handler prompt (issue 14)."""

import json
import subprocess
from pathlib import Path

import pytest

from personafleet import knowledge
from personafleet.errors import PersonaError
from personafleet.inference import GenerationLimits, InferenceRequest
from personafleet.knowledge import KnowledgeSource, build_knowledge
from personafleet.persona import PersonaSpec
from personafleet.records import DialogueRecord, Source, Utterance
from persona_serving.requests import PersonaVersion, Prepared, Routed, prepare
from persona_training.config import TrainConfig, load_config
from persona_training.data import prompt_for
from persona_training.package import publish_version
from persona_training.train import train
from tests.fixtures.tiny_model import train_tiny_run

ROOT = Path(__file__).resolve().parents[2]
PERSONA_CLI = ROOT / ".venv" / "bin" / "persona"
FACTS_V1 = ["Работаю DevOps-инженером в Яндексе", "Живу в Казани", "Мой кот Барсик"]
FACTS_V2 = ["Работаю SRE в Тинькофф", "Живу в Новосибирске"]


def conversation(*texts: str) -> DialogueRecord:
    """A record whose context alternates user / persona turns, ending with the user's question."""
    authors = ["user2" if (len(texts) - i) % 2 == 0 else "user1" for i in range(len(texts))]
    return DialogueRecord(
        context=[Utterance(author=author, name="x", text=t) for author, t in zip(authors, texts)],
        reply=Utterance(author="user2", name="Boris", text="в Яндексе"),
        source=Source(chat_id=1, message_id=1),
    )


def write_facts(path: Path, facts: list[str]) -> Path:
    path.write_text("# Обо мне\n" + "".join(f"- {fact}\n" for fact in facts), encoding="utf-8")
    return path


# --- prompts and configuration (no model) -----------------------------------------------------
def test_a_training_prompt_carries_the_facts_retrieved_for_its_context():
    persona = PersonaSpec()
    record = conversation("привет", "ку", "а где работаешь сейчас?")
    assert record_roles(record) == ["user", "persona", "user"]
    with_facts = prompt_for(record, persona, build_knowledge([], FACTS_V1))
    assert with_facts.splitlines()[0] == f"<SC6>{persona.description} Работаю DevOps-инженером в Яндексе. Продолжи диалог:"
    assert prompt_for(record, persona) == prompt_for(record, persona, None)
    assert "Яндекс" not in prompt_for(record, persona)


def record_roles(record: DialogueRecord) -> list[str]:
    from personafleet.prompt import record_turns

    return [turn.role for turn in record_turns(record)]


def test_train_yaml_knowledge_and_cli_files_combine(tmp_path):
    facts = write_facts(tmp_path / "facts.md", FACTS_V1)
    config_file = tmp_path / "train.yaml"
    config_file.write_text(f"knowledge:\n  facts: [Люблю горы]\n  files: [{facts}]\n  top_k: 2\n", encoding="utf-8")
    config = load_config(config_file).with_knowledge_files([tmp_path / "more.md"])
    assert config.knowledge.files == [facts, tmp_path / "more.md"] and config.knowledge.top_k == 2
    assert TrainConfig().with_knowledge_files([facts]).knowledge == KnowledgeSource(files=[facts])
    assert TrainConfig().with_knowledge_files([]).knowledge is None
    config_file.write_text("knowledge:\n  fact: [typo]\n", encoding="utf-8")
    with pytest.raises(PersonaError, match="knowledge.fact: Extra inputs"):
        load_config(config_file)


def test_bad_knowledge_fails_before_any_model_is_loaded(tmp_path, tiny_data):
    config = TrainConfig(knowledge=KnowledgeSource(files=[tmp_path / "missing.md"]))
    with pytest.raises(PersonaError, match="missing.md: no such knowledge file"):
        train([tiny_data], "no/such-base", tmp_path / "run", config)


def test_cli_reports_a_bad_knowledge_file_on_one_line(tmp_path, tiny_data):
    bad = tmp_path / "facts.md"
    bad.write_bytes(b"- \xff\n")
    result = subprocess.run([str(PERSONA_CLI), "train", "--data", str(tiny_data), "--base", "x", "--out",
                             str(tmp_path / "run"), "--knowledge", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"persona: error: {bad}:1: not UTF-8 text"


# --- a real run, packaged, and read back as the handler does ----------------------------------
@pytest.fixture(scope="module")
def store(tiny_base, tiny_data, tmp_path_factory) -> Path:
    """Two published versions of one persona, trained with different facts."""
    root = tmp_path_factory.mktemp("knowledge")
    store = root / "store"
    for version, facts in ((1, FACTS_V1), (2, FACTS_V2)):
        source = KnowledgeSource(files=[write_facts(root / f"facts{version}.md", facts)])
        run = train_tiny_run(tiny_base, tiny_data, root / f"run{version}", steps=2, knowledge=source)
        publish_version(run, "devops-dude", version, store / "devops-dude" / f"v{version}")
    return store


def test_training_saves_the_facts_and_package_publishes_them_with_the_version(store):
    v1 = store / "devops-dude" / "v1"
    run = v1.parent.parent.parent / "run1"
    assert knowledge.load(run).facts == FACTS_V1
    assert json.loads((run / "report.json").read_text(encoding="utf-8"))["knowledge"] == {"facts": 3}
    assert knowledge.load(v1) == knowledge.load(run)
    assert json.loads((v1 / knowledge.KNOWLEDGE_FILE).read_text(encoding="utf-8"))["facts"] == FACTS_V1


def test_rolling_back_brings_the_older_versions_facts_back(store):
    assert knowledge.load(store / "devops-dude" / "v2").facts == FACTS_V2
    assert knowledge.load(store / "devops-dude" / "v1").facts == FACTS_V1
    assert knowledge.count(store / "devops-dude" / "v1") == 3


def test_a_run_without_knowledge_publishes_none(tiny_run, tmp_path):
    out = tmp_path / "devops-dude" / "v1"
    out.mkdir(parents=True)
    (out / knowledge.KNOWLEDGE_FILE).write_text('{"facts": ["stale"]}')  # an earlier publication's
    publish_version(tiny_run, "devops-dude", 1, out, force=True)
    assert not (out / knowledge.KNOWLEDGE_FILE).exists() and knowledge.count(out) == 0


def served(body: dict, version_dir: Path | None, version: int = 1) -> Prepared:
    """What the fleet handler prepares for `body` once the version's adapter is resident."""
    request = InferenceRequest.model_validate({"persona": "devops-dude"} | body)
    entry = PersonaVersion("devops-dude", version, PersonaSpec(name="devops-dude"), version_dir or Path("."),
                           knowledge.load(version_dir) if version_dir else None)
    return prepare(Routed(request, "devops-dude", version), entry, GenerationLimits())


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("texts", [
    ("где работаешь?",),
    ("привет", "ку", "а живёшь где? в Казани?"),
    ("кот", "какой кот", "как твой кот поживает", "ну а работа как?"),  # only the newest 3 turns count
    ("ну привет",),
])
def test_the_handler_renders_the_prompt_training_rendered(store, version, texts):
    """Same conversation, same facts: the request the bot would send for a record's context is
    prepared by the handler (knowledge loaded from the version folder) into the training prompt."""
    version_dir = store / "devops-dude" / f"v{version}"
    persona = PersonaSpec(name="devops-dude")
    record = conversation(*texts)
    trained = prompt_for(record, persona, knowledge.load(version_dir.parent.parent.parent / f"run{version}"))
    context = [{"role": role, "text": turn.text} for role, turn in zip(record_roles(record), record.context)]
    body = {"context": context[:-1], "message": context[-1]["text"]}
    prepared = served(body, version_dir, version)
    assert prepared.prompt == trained and prepared.retrieval_seconds > 0


@pytest.mark.parametrize("version, question, fact", [
    (1, "где работаешь?", "Работаю DevOps-инженером в Яндексе."),
    (2, "где работаешь?", "Работаю SRE в Тинькофф."),
    (1, "ну привет", None),
])
def test_the_handler_puts_the_versions_own_facts_into_the_prompt(store, version, question, fact):
    prepared = served({"message": question}, store / "devops-dude" / f"v{version}", version)
    assert prepared.facts == ((fact.removesuffix("."),) if fact else ())
    assert (fact in prepared.prompt.splitlines()[0]) if fact else prepared.prompt == served({"message": question}, None).prompt


def test_the_real_handler_loads_the_versions_facts_with_its_adapter_and_records_its_metrics(
        store, tiny_base, tmp_path, caplog):
    """FleetHandler in-process with TorchServe's own Context and metrics cache (which refuses
    undeclared metrics): the version folder's knowledge.json reaches the prompt and the two histograms."""
    import logging

    from persona_serving.config import FleetConfig
    from personafleet.inference import PersonaAbout
    from personafleet.routing import update_routing
    from tests.fixtures.handler import Worker, final, in_process_handler

    update_routing(store, lambda table: table.add("devops-dude", 1, serve=True))
    handler = in_process_handler(tmp_path, FleetConfig(base=str(tiny_base), model_store=str(store)))
    worker = Worker(handler, handler.context)
    greedy = {"max_new_tokens": 4, "do_sample": False}
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        answers = worker.run([{"job": {"persona": "devops-dude", "message": "где работаешь?", "generation": greedy},
                               "hello": {"persona": "devops-dude", "message": "ну привет", "generation": greedy}}])
        replies = [final(answers[request_id]) for request_id in ("job", "hello")]
        assert [reply.model_version for reply in replies] == ["1", "1"]
        assert [reply.facts for reply in replies] == [None, None]  # not asked for
    # Issue 26: a request may ask for the facts retrieved into its prompt; `about` describes the version.
    answers = worker.run([{"shown": {"persona": "devops-dude", "message": "где работаешь?", "generation": greedy,
                                     "show_facts": True},
                           "about": {"persona": "devops-dude", "about": True}}])
    assert final(answers["shown"]).facts == ["Работаю DevOps-инженером в Яндексе"]
    about = PersonaAbout.model_validate_json(answers["about"][-1].body)
    assert (about.model_version, about.base, about.facts) == ("1", str(tiny_base), 3)
    assert about.trained_at is not None and about.trained_at.tzinfo is not None
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    assert sum(line.startswith("[METRICS]persona_handler_retrieval_seconds.Seconds:") for line in lines) == 2
    assert sorted(line.split(":")[1].split("|")[0] for line in lines
                  if line.startswith("[METRICS]persona_handler_facts_per_prompt")) == ["0", "1"]
