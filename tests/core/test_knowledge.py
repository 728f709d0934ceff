"""Persona knowledge: reading facts, refusing bad input, and the one retrieval function."""

from pathlib import Path

import pytest

from personafleet import knowledge
from personafleet.errors import PersonaError
from personafleet.knowledge import Knowledge, build_knowledge, retrieve, terms
from personafleet.prompt import PromptTemplate, Turn, render_prompt

FACTS = [
    "Работаю DevOps-инженером в Яндексе",
    "Живу в Казани",
    "Люблю горы и походы",
    "Мой кот Барсик",
    "Пишу на Python и Go",
]


def _ask(text: str) -> list[Turn]:
    return [Turn(role="user", text=text)]


@pytest.fixture
def facts() -> Knowledge:
    return build_knowledge([], FACTS)


# --- morphology and ranking -------------------------------------------------------------------
def test_a_verb_form_finds_the_noun_fact():
    assert set(terms("работаю")) == set(terms("работа")) == set(terms("работу"))
    k = build_knowledge([], ["У меня интересная работа", "Живу в Казани"])
    assert retrieve(k, _ask("Я работаю, а ты?")) == ["У меня интересная работа"]


@pytest.mark.parametrize("question, fact", [
    ("где работаешь?", "Работаю DevOps-инженером в Яндексе"),
    ("в каком городе? в Казани небось", "Живу в Казани"),
    ("ходил в горах?", "Люблю горы и походы"),
    ("как там твой кот?", "Мой кот Барсик"),
    ("какие коты у тебя?", "Мой кот Барсик"),
    ("на python пишешь?", "Пишу на Python и Go"),
])
def test_inflected_questions_find_their_fact_first(facts, question, fact):
    assert retrieve(facts, _ask(question))[0] == fact


def test_a_conversation_sharing_no_term_with_any_fact_gets_no_facts(facts):
    assert retrieve(facts, _ask("ну привет")) == []
    assert retrieve(facts, _ask("и что?")) == []  # stop words only
    assert retrieve(None, _ask("где работаешь?")) == []


def test_only_the_newest_turns_are_the_query(facts):
    old = [Turn(role="user", text="как там кот?"), Turn(role="persona", text="норм")]
    recent = [Turn(role="user", text="ага"), Turn(role="persona", text="угу"), Turn(role="user", text="ну")]
    assert retrieve(facts, old + recent) == []
    assert retrieve(facts, old + recent, max_turns=5) == ["Мой кот Барсик"]


def test_top_k_and_the_character_budget_bound_the_facts():
    many = [f"Кот номер {i} любит рыбу" for i in range(10)]
    question = _ask("что любит кот?")
    assert len(retrieve(build_knowledge([], many, top_k=4), question)) == 4
    budget = len(many[0]) * 2 + 5
    picked = retrieve(build_knowledge([], many, top_k=10, max_chars=budget), question)
    assert len(picked) == 2 and sum(map(len, picked)) <= budget


def test_a_fact_that_overruns_the_remaining_budget_is_skipped_for_a_shorter_one():
    k = build_knowledge([], ["Кот " + "очень " * 8 + "большой", "Кот маленький", "Кот рыжий"], max_chars=60)
    picked = retrieve(k, _ask("кот"))
    assert sum(map(len, picked)) <= 60 and len(picked) >= 2


def test_retrieval_is_deterministic_and_ties_keep_file_order():
    k = build_knowledge([], ["Кот рыжий", "Кот серый", "Кот белый"], top_k=2)
    assert retrieve(k, _ask("кот")) == ["Кот рыжий", "Кот серый"]
    assert retrieve(Knowledge.model_validate_json(k.model_dump_json()), _ask("кот")) == ["Кот рыжий", "Кот серый"]


# --- the prompt -------------------------------------------------------------------------------
def test_facts_follow_the_description_as_sentences():
    prompt = render_prompt(PromptTemplate(), "Я инженер.", _ask("где работаешь?"),
                           facts=["Работаю в Яндексе", "Живу в Казани!"])
    assert prompt.splitlines()[0] == "<SC6>Я инженер. Работаю в Яндексе. Живу в Казани! Продолжи диалог:"


def test_no_facts_leave_the_prompt_byte_for_byte_unchanged():
    turns = _ask("привет")
    assert render_prompt(PromptTemplate(), " Я DevOps. ", turns, facts=[]) == render_prompt(PromptTemplate(), " Я DevOps. ", turns)
    assert render_prompt(PromptTemplate(), "", turns, facts=["Кот"]).splitlines()[0] == "<SC6>Кот. Продолжи диалог:"


# --- files and bad input ----------------------------------------------------------------------
def test_markdown_bullets_plain_lines_and_inline_facts_are_read(tmp_path):
    md = tmp_path / "facts.md"
    md.write_text("# Обо мне\n\n- Живу в Казани\n* Люблю горы\n1. Мой кот Барсик\n\nПишу на Go\n", encoding="utf-8")
    k = build_knowledge([md], ["Работаю в Яндексе"])
    assert k.facts == ["Живу в Казани", "Люблю горы", "Мой кот Барсик", "Пишу на Go", "Работаю в Яндексе"]


def test_duplicates_are_dropped_with_a_warning(tmp_path, caplog):
    md = tmp_path / "facts.md"
    md.write_text("- Живу в Казани\n- живу в  казани.\n", encoding="utf-8")
    k = build_knowledge([md], ["Живу в Казани"])
    assert k.facts == ["Живу в Казани"]
    assert "2 duplicate fact(s) dropped" in caplog.text


@pytest.mark.parametrize("content, message", [
    (b"", "no facts"),
    (b"# only a heading\n\n", "no facts"),
    ("- Живу в Казани\n".encode() + b"\xff\xfe bad\n", ":2: not UTF-8 text"),
    (("- " + "очень " * 60 + "длинный факт\n").encode(), ":1: fact is 372 characters, over the 300-character budget"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "facts.md"
    path.write_bytes(content)
    with pytest.raises(PersonaError, match=message.replace("(", r"\(")) as error:
        build_knowledge([path])
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_an_oversized_or_missing_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "facts.md"
    path.write_text("- кот\n" * 10, encoding="utf-8")
    monkeypatch.setattr(knowledge, "MAX_FILE_BYTES", 20)
    with pytest.raises(PersonaError, match="over the 20-byte limit"):
        build_knowledge([path])
    with pytest.raises(PersonaError, match="no such knowledge file"):
        build_knowledge([tmp_path / "missing.md"])
    with pytest.raises(PersonaError, match="is a directory"):
        build_knowledge([tmp_path])


def test_empty_inline_fact_and_too_many_facts_are_refused(monkeypatch):
    with pytest.raises(PersonaError, match="inline fact 2: empty fact"):
        build_knowledge([], ["кот", "  "])
    monkeypatch.setattr(knowledge, "MAX_FACTS", 2)
    with pytest.raises(PersonaError, match="3 facts, over the limit of 2"):
        build_knowledge([], ["кот", "пёс", "ёж"])


# --- saving, loading, copying -----------------------------------------------------------------
def test_save_load_copy_round_trip(tmp_path, facts):
    run, version = tmp_path / "run", tmp_path / "store" / "p" / "v1"
    run.mkdir()
    assert knowledge.load(run) is None and knowledge.copy(run, version) is False
    assert not version.exists()
    knowledge.save(facts, run)
    assert knowledge.copy(run, version) is True
    assert knowledge.load(version) == facts and knowledge.count(version) == len(FACTS)


def test_a_broken_knowledge_json_is_not_loaded_or_published(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / knowledge.KNOWLEDGE_FILE).write_text('{"facts": ["кот", "Кот."]}', encoding="utf-8")
    with pytest.raises(PersonaError, match="not a knowledge file .*duplicate fact"):
        knowledge.load(run)
    with pytest.raises(PersonaError):
        knowledge.copy(run, tmp_path / "v1")
    assert not (tmp_path / "v1" / knowledge.KNOWLEDGE_FILE).exists()
