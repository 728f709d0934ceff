"""`run_prepare` rules on the hand-written fixture exports: one test per rule of issue 2.

tests/training/fixtures/exports/single_chat.json is built so that each message exercises one
rule; its README names them by message id. Session 1 is ids 2-14, session 2 ids 20-21,
session 3 ids 30-42 (hours apart), and id 42 replies to id 3 from session 1.
"""

import json
from pathlib import Path

import pytest

from personafleet.errors import PersonaError
from personafleet.records import DialogueRecord, read_records
from persona_training import prepare as prepare_module
from persona_training.prepare import DropReason, PrepareOptions, run_prepare

EXPORTS = Path(__file__).parent / "fixtures" / "exports"
CHAT = EXPORTS / "single_chat.json"
REPLIES = {3, 4, 7, 9, 11, 14, 21, 31, 36, 37, 38, 39, 40, 41, 42}


def prepare(out: Path, *exports: Path, **options) -> tuple[list[DialogueRecord], list[DialogueRecord], dict]:
    run_prepare(list(exports or [CHAT]), out, PrepareOptions(**options))
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    return read_records(out / "train.jsonl"), read_records(out / "val.jsonl"), stats


def by_id(records: list[DialogueRecord]) -> dict[int, DialogueRecord]:
    return {r.source.message_id: r for r in records}


def texts(record: DialogueRecord) -> list[str]:
    return [turn.text for turn in record.context]


@pytest.fixture
def default_run(tmp_path):
    train, val, stats = prepare(tmp_path / "data")
    return by_id(train + val), stats


def test_every_message_is_a_reply_or_dropped_for_one_counted_reason(default_run):
    records, stats = default_run
    assert set(records) == REPLIES
    assert stats["dropped"] == {
        "service": 2, "other_author": 0, "deleted_account": 1, "no_author": 1, "forwarded": 1,
        "media_only": 2, "empty": 1, "url_only": 1, "merged": 1, "too_long": 1, "no_context": 3, "own_turn": 0,
        "duplicate": 0,
    }
    assert set(stats["dropped"]) == {reason.value for reason in DropReason}
    assert stats["messages_read"] == 29 == len(records) + sum(stats["dropped"].values())
    assert stats["records"]["train"] + stats["records"]["val"] == len(records)


def test_record_shape_names_author_by_from_id_and_source_by_export_ids(default_run):
    records, _ = default_run
    record = records[3]
    assert record.reply.model_dump() == {"author": "user1002", "name": "Bob", "text": "kubectl delete pod, он пересоздастся"}
    assert record.source.model_dump() == {"chat_id": 777, "message_id": 3}
    assert [t.author for t in record.context] == ["user1001"]


def test_context_is_the_window_newest_last_plus_the_replied_to_message(default_run):
    records, _ = default_run
    assert texts(records[9]) == ["Спасибо! Вот и ещё тоже", "вот дашборд", "Kubernetes 1.30 released"]
    # id 42 answers id 3, ten hours earlier: the replied-to message leads, the window follows.
    assert texts(records[42]) == ["kubectl delete pod, он пересоздастся", "см. доку", "запусти kubectl get pods -A и пришли вывод"]


def test_a_reply_to_a_deleted_message_still_gets_its_window(default_run):
    records, _ = default_run
    assert texts(records[11]) == ["Kubernetes 1.30 released", "наконец-то", "кто-нибудь тут?"]


def test_forwards_and_deleted_accounts_are_context_but_never_replies(default_run):
    records, _ = default_run
    context = records[11].context
    assert (context[0].author, context[2].author, context[2].name) == ("user1003", "user1099", "Deleted Account")
    assert all(r.reply.author != "user1099" and r.reply.text != "Kubernetes 1.30 released" for r in records.values())


def test_media_captions_and_text_entities_become_plain_text(default_run):
    records, _ = default_run
    assert records[7].reply.text == "вот дашборд"
    assert records[40].reply.text == "см. доку"
    assert records[41].reply.text == "запусти kubectl get pods -A и пришли вывод"


def test_no_url_survives_into_any_record(default_run):
    records, _ = default_run
    assert records[4].reply.text == "Спасибо! Вот и ещё тоже"
    every_text = [t.text for r in records.values() for t in [*r.context, r.reply]]
    assert not [t for t in every_text if "://" in t or "www." in t or "github.com" in t]


def test_window_minutes_bounds_the_context(tmp_path):
    train, val, stats = prepare(tmp_path / "w0", window_minutes=0)
    records = by_id(train + val)
    # Without a window only a surviving replied-to message gives context.
    assert set(records) == {3, 4, 9, 14, 21, 31, 36, 37, 38, 40, 41, 42}
    assert all(len(r.context) == 1 for r in records.values())
    assert stats["dropped"]["no_context"] == 3 + 3  # ids 7, 11, 39 lost their window
    train, val, _ = prepare(tmp_path / "w2", window_minutes=2)
    assert texts(by_id(train + val)[9]) == ["вот дашборд", "Kubernetes 1.30 released"]


def test_turn_and_character_budgets(tmp_path):
    train, val, _ = prepare(tmp_path / "t1", context_turns=1)
    records = by_id(train + val)
    assert all(len(r.context) == 1 for r in records.values())
    assert texts(records[42]) == ["kubectl delete pod, он пересоздастся"]  # the replied-to message wins
    assert texts(records[7]) == ["Спасибо! Вот и ещё тоже"]  # otherwise the newest
    train, val, _ = prepare(tmp_path / "c40", max_context_chars=40)
    records = by_id(train + val)
    assert all(sum(len(t) for t in texts(r)) <= 40 for r in records.values())
    assert texts(records[14]) == ["refused; connection refused; connection refused;"[-40:]]


def test_replies_over_the_message_limit_are_not_targets(tmp_path):
    train, val, stats = prepare(tmp_path / "data", max_message_chars=12)
    assert all(len(r.reply.text) <= 12 for r in train + val)
    assert {r.source.message_id for r in train + val} == {7, 9, 11, 14, 21, 38, 40}
    # id 13 as before, 7 former replies, id 2, whose length is checked before its (missing) context,
    # and ids 31-32: "привет" twice is one 13-character turn.
    assert (stats["dropped"]["too_long"], stats["dropped"]["no_context"]) == (1 + 7 + 1 + 1, 3 - 1)


def test_scrub_replaces_personal_data_in_replies_and_context(tmp_path):
    train, val, _ = prepare(tmp_path / "data", scrub=True)
    records = by_id(train + val)
    assert records[36].reply.text == "пишите [email] или звоните [phone], спросите [mention]"
    assert records[37].reply.text == "моя почта [email], тел [phone], cc [mention]"
    assert texts(records[37])[-1] == records[36].reply.text
    assert not [t for r in records.values() for t in [*texts(r), r.reply.text] if "@" in t or "555" in t]


def test_without_scrub_the_text_is_kept_verbatim(default_run):
    records, _ = default_run
    assert records[36].reply.text == "пишите ops@example.com или звоните +7 916 555-01-23, спросите @boris_k8s"


def test_persona_id_keeps_only_that_authors_replies(tmp_path):
    train, val, stats = prepare(tmp_path / "data", persona_id="user1002")
    assert {r.source.message_id for r in train + val} == {3, 7, 9, 21, 31, 37, 40}
    assert {r.reply.author for r in train + val} == {"user1002"}
    assert stats["dropped"]["other_author"] == 17  # every message not by user1002, Ghost's included
    assert stats["options"]["persona_id"] == "user1002"
    # Context still comes from everyone.
    assert {t.author for r in train + val for t in r.context} >= {"user1001", "user1003"}


def test_persona_id_accepts_the_bare_number(tmp_path):
    train, val, stats = prepare(tmp_path / "data", persona_id="1002")
    assert stats["options"]["persona_id"] == "user1002" and {r.reply.author for r in train + val} == {"user1002"}


def test_unknown_persona_id_names_the_authors_to_choose_from(tmp_path):
    with pytest.raises(PersonaError, match=r"user9999: no messages by that author \(most active: user1002, user1001"):
        run_prepare([CHAT], tmp_path / "data", PrepareOptions(persona_id="user9999"))
    assert not (tmp_path / "data").exists()


def test_duplicate_pairs_are_dropped_even_across_exports(tmp_path):
    train, val, stats = prepare(tmp_path / "data", CHAT, CHAT)
    assert len(train + val) == len(REPLIES)
    assert stats["dropped"]["duplicate"] == len(REPLIES)
    assert stats["messages_read"] == 58


def test_account_export_gives_records_from_every_chat(tmp_path):
    train, val, stats = prepare(tmp_path / "data", EXPORTS / "account.json")
    assert {(r.source.chat_id, r.source.message_id) for r in train + val} == {(1002, 502), (4242, 9), (9001, 2)}
    assert by_id(train + val)[9].context[0].text == "деплой упал, exit 137"
    assert stats["chats"] == 4


def test_split_keeps_linked_conversations_together_and_is_deterministic(tmp_path):
    train, val, stats = prepare(tmp_path / "a", val_fraction=0.5)
    # Sessions 1 and 3 are one conversation (id 42 answers id 3); session 2 is the other.
    assert {r.source.message_id for r in val} == {21}
    assert stats["conversations"] == {"train": 1, "val": 1}
    prepare(tmp_path / "b", val_fraction=0.5)
    for name in ("train.jsonl", "val.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_val_fraction_zero_puts_everything_in_train(tmp_path):
    train, val, _ = prepare(tmp_path / "data", val_fraction=0.0)
    assert len(train) == len(REPLIES) and val == []


def test_stats_record_options_and_authors(default_run):
    _, stats = default_run
    assert stats["options"]["context_turns"] == 3 and stats["options"]["window_minutes"] == 180
    assert stats["authors"][0] == {"author": "user1002", "name": "Bob", "messages": 10, "records": 7}
    assert stats["exports"] == [str(CHAT)]


def test_summary_lists_counts_drops_and_top_authors(tmp_path, capsys):
    prepare(tmp_path / "data")
    printed = capsys.readouterr().out
    assert "read 29 messages in 1 chat(s) -> 15 records" in printed
    assert "merged 1" in printed and "user1002 Bob (10 msgs, 7 records)" in printed


def test_large_exports_show_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prepare_module, "PROGRESS_MIN_MESSAGES", 10)
    prepare(tmp_path / "data")
    assert "29/29" in capsys.readouterr().err


def test_bad_input_writes_nothing_and_leaves_an_existing_out_alone(tmp_path):
    out = tmp_path / "data"
    prepare(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(PersonaError, match="truncated"):
        run_prepare([CHAT, EXPORTS / "truncated.json"], out, PrepareOptions(seed=99))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(PersonaError, match="no such file"):
        run_prepare([tmp_path / "missing.json"], tmp_path / "fresh", PrepareOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_run_with_no_records_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(PersonaError, match="no dialogue records"):
        run_prepare([CHAT], tmp_path / "data", PrepareOptions(persona_id="user1099"))
    assert list(tmp_path.iterdir()) == []


def test_an_existing_out_directory_keeps_other_files_and_gets_new_data(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "train.jsonl").write_text("stale\n")
    train, _, _ = prepare(out)
    assert (out / "notes.txt").read_text() == "mine" and len(train) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging directory left behind


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "data").write_text("x")
    with pytest.raises(PersonaError, match="not a directory"):
        run_prepare([CHAT], tmp_path / "data", PrepareOptions())


def test_a_single_conversation_stays_in_train_with_a_warning(tmp_path, capsys):
    export = tmp_path / "one.json"
    export.write_text(json.dumps({"id": 5, "messages": [
        {"id": 1, "type": "message", "date": "2024-01-01T10:00:00", "from": "A", "from_id": "user1", "text": "ping"},
        {"id": 2, "type": "message", "date": "2024-01-01T10:01:00", "from": "B", "from_id": "user2", "text": "pong"},
    ]}))
    train, val, _ = prepare(tmp_path / "data", export)
    assert [r.reply.text for r in train] == ["pong"] and val == []
    assert "warning: validation set is empty" in capsys.readouterr().out


def test_one_authors_messages_within_the_merge_gap_are_one_turn(default_run):
    records, stats = default_run
    # ids 31 and 32 (Bob, one minute apart) are one reply, named by its first message.
    assert records[31].reply.text == "привет привет" and texts(records[31]) == ["привет"]
    assert stats["dropped"]["merged"] == 1 and stats["options"]["merge_gap_seconds"] == 300


def test_a_turn_right_after_its_own_authors_turn_is_not_a_reply(tmp_path):
    # Below the ids' one-minute spacing nothing merges: id 32 follows Bob's own id 31.
    train, val, stats = prepare(tmp_path / "data", merge_gap_seconds=30)
    records = by_id(train + val)
    assert 32 not in records and stats["dropped"]["own_turn"] == 1
    assert 31 not in records and stats["dropped"]["duplicate"] == 1  # the same pair as ids 20-21
    assert all(r.context[-1].author != r.reply.author for r in records.values())


def test_context_turns_are_cut_to_the_message_cap_not_dropped(default_run, tmp_path):
    records, _ = default_run
    long_message = records[14].context[-1].text
    assert len(long_message) == 200 and long_message.endswith("connection refused;")  # id 13 has 245
    train, val, _ = prepare(tmp_path / "c100", max_message_chars=100)
    assert [len(t) for t in texts(by_id(train + val)[14])][-1] == 100  # and older turns now fit the budget
