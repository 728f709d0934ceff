from personafleet.prompt import (
    PromptTemplate,
    TimedTurn,
    Turn,
    conversation,
    fit_context,
    record_turns,
    render_prompt,
)
from personafleet.records import DialogueRecord


def _turns(*texts: str) -> list[Turn]:
    return [Turn(role="user" if i % 2 == 0 else "persona", text=t) for i, t in enumerate(texts)]


def test_render_prompt_labels_persona_and_user_turns_and_ends_with_the_answer_slot():
    template = PromptTemplate()
    prompt = render_prompt(template, "Я DevOps.", _turns("Привет", "Здарова", "Как дела?"))
    lines = prompt.splitlines()
    assert lines[0] == "<SC6>Я DevOps. Продолжи диалог:"
    assert lines[1:4] == ["Собеседник: Привет", "Ты: Здарова", "Собеседник: Как дела?"]
    assert lines[-1] == "Ты: <extra_id_0>"


def test_fit_context_keeps_the_newest_turns_within_both_budgets():
    turns = _turns("a" * 10, "b" * 10, "c" * 10, "d" * 10)
    assert [t.text[0] for t in fit_context(turns, max_turns=3, max_chars=100)] == ["b", "c", "d"]
    assert [t.text[0] for t in fit_context(turns, max_turns=10, max_chars=25)] == ["c", "d"]


def test_fit_context_truncates_a_single_oversized_newest_turn_instead_of_dropping_it():
    kept = fit_context(_turns("x" * 50), max_turns=3, max_chars=20)
    assert len(kept) == 1 and kept[0].text == "x" * 20


def test_render_prompt_applies_the_template_budget():
    template = PromptTemplate(max_context_turns=2)
    prompt = render_prompt(template, "P", _turns("one", "two", "three"))
    assert "one" not in prompt and "two" in prompt and "three" in prompt


def test_record_turns_gives_the_reply_author_the_persona_role():
    record = DialogueRecord.model_validate(
        {
            "context": [
                {"author": "user1", "name": "Anna", "text": "кто деплоил?"},
                {"author": "user2", "name": "Boris", "text": "я"},
                {"author": "user1", "name": "Anna", "text": "зачем"},
            ],
            "reply": {"author": "user2", "name": "Boris", "text": "так надо"},
            "source": {"chat_id": 1, "message_id": 10},
        }
    )
    assert [t.role for t in record_turns(record)] == ["user", "persona", "user"]


def _timed(*turns: tuple[str, str, float]) -> list[TimedTurn]:
    return [TimedTurn(role=role, text=text, time=time) for role, text, time in turns]


def test_conversation_sends_only_turns_inside_the_window_and_always_the_newest():
    now = 100_000.0
    turns = _timed(("user", "unknown age", 0), ("persona", "too old", now - 3 * 3600 - 1),
                   ("user", "recent", now - 3 * 3600), ("persona", "answer", now - 10), ("user", "new", now))
    assert [t.text for t in conversation(turns, now)] == ["recent", "answer", "new"]
    assert [t.text for t in conversation(_timed(("user", "alone", 0)), now)] == ["alone"]


def test_conversation_merges_one_roles_turns_within_the_gap_like_prepare():
    now = 100_000.0
    turns = _timed(("user", "hi", now - 1100), ("user", "are you there?", now - 700),
                   ("user", "hello??", now - 600), ("persona", "yes", now - 590), ("user", "ok", now))
    shaped = conversation(turns, now, gap=300)
    assert [(t.role, t.text) for t in shaped] == [
        ("user", "hi"), ("user", "are you there? hello??"), ("persona", "yes"), ("user", "ok"),
    ]
    assert all(type(t) is Turn for t in shaped)  # what the inference API takes


def test_conversation_merges_one_authors_burst_not_a_groups_like_prepare():
    """prepare merges by author: two members talking in a group are two turns, as in training."""
    now = 100_000.0
    turns = [TimedTurn(role="user", text=text, time=now - age, author=author) for text, age, author in (
        ("the deploy failed", 60, "user1"), ("again", 50, "user1"), ("it was the disk", 40, "user2"),
        ("any idea?", 0, "user1"))]
    assert [t.text for t in conversation(turns, now)] == ["the deploy failed again", "it was the disk", "any idea?"]
    unnamed = [TimedTurn(role="user", text="kept before authors", time=now - 30), turns[-1]]
    assert [t.text for t in conversation(unnamed, now)] == ["kept before authors", "any idea?"]


def test_conversation_cuts_every_turn_to_the_message_cap_keeping_its_end():
    now = 100_000.0
    shaped = conversation(_timed(("persona", "a" * 300 + "end", now - 5), ("user", "b" * 250, now)), now, max_chars=200)
    assert [len(t.text) for t in shaped] == [200, 200] and shaped[0].text.endswith("end")
