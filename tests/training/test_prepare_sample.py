"""The shipped sample export: reproducible, realistic, and enough data for a persona."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from personafleet.records import read_records
from persona_training.prepare import PrepareOptions, run_prepare
from persona_training.telegram import load_export

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-export" / "result.json"
GENERATOR = ROOT / "scripts" / "generate_sample_export.py"
PERSONA_ID = "user5172839406"
URL = re.compile(r"https?://|www\.|t\.me/|github\.com/")


def generate(out: Path, *args: str) -> bytes:
    subprocess.run([sys.executable, GENERATOR, "--out", out, *args], check=True, capture_output=True, timeout=60)
    return out.read_bytes()


@pytest.fixture(scope="module")
def export() -> dict:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """Default prepare and the persona's, once for the module: {name: (train, val, stats)}."""
    runs = {}
    for name, options in {"all": PrepareOptions(), "persona": PrepareOptions(persona_id=PERSONA_ID)}.items():
        out = tmp_path_factory.mktemp(name)
        run_prepare([SAMPLE], out, options)
        stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
        runs[name] = (read_records(out / "train.jsonl"), read_records(out / "val.jsonl"), stats)
    return runs


def test_the_generator_reproduces_the_shipped_file_byte_for_byte(tmp_path):
    assert generate(tmp_path / "again.json") == SAMPLE.read_bytes()
    assert generate(tmp_path / "other.json", "--seed", "7") != SAMPLE.read_bytes()


def test_the_generator_scales(tmp_path):
    small = json.loads(generate(tmp_path / "small.json", "--messages", "300"))
    assert 280 <= len(small["messages"]) <= 330


def test_sample_is_a_few_megabytes_of_months_of_chat(export):
    assert SAMPLE.stat().st_size < 4_000_000
    messages = export["messages"]
    assert 5000 <= len(messages) <= 6000
    days = (int(messages[-1]["date_unixtime"]) - int(messages[0]["date_unixtime"])) / 86400
    assert days > 120
    texts = [m["text"] for m in messages if isinstance(m["text"], str) and m["text"]]
    assert sum(bool(re.search("[а-яё]", t)) for t in texts) > 1000
    assert sum(t.isascii() and " " in t for t in texts) > 500


def test_sample_has_regulars_and_the_persona_is_the_most_active(export):
    authors = Counter(m["from_id"] for m in export["messages"] if m["type"] == "message")
    regulars = [author for author, count in authors.items() if count >= 150]
    assert len(regulars) >= 6
    assert authors.most_common(1)[0][0] == PERSONA_ID


def test_sample_carries_every_untidy_shape_of_real_exports(export):
    messages = export["messages"]
    ids = {m["id"] for m in messages}
    entity_types = {part["type"] for m in messages if isinstance(m["text"], list) for part in m["text"] if isinstance(part, dict)}
    actions = {m.get("action") for m in messages if m["type"] == "service"}
    assert {"join_group_by_link", "invite_members", "pin_message"} <= actions
    assert any(m.get("from", "") is None for m in messages)
    assert any("forwarded_from" in m for m in messages)
    assert any(m.get("media_type") == "sticker" and m["text"] == "" for m in messages)
    assert any("photo" in m and m["text"] == "" for m in messages)
    assert any("photo" in m and m["text"] for m in messages)
    assert any("edited" in m for m in messages)
    assert any(m.get("reply_to_message_id") not in ids for m in messages if "reply_to_message_id" in m)
    assert {"link", "text_link", "code", "pre", "mention", "mention_name", "email", "phone", "hashtag"} <= entity_types
    assert any(isinstance(m["text"], str) and len(m["text"]) > 300 for m in messages)
    double_sent = Counter((m.get("from_id"), m["text"]) for m in messages if isinstance(m["text"], str) and len(m["text"]) > 40)
    assert any(count > 1 for count in double_sent.values())
    assert all(m["text_entities"] is not None for m in messages)


def test_default_prepare_gives_thousands_of_records_and_a_real_validation_set(prepared):
    train, val, stats = prepared["all"]
    assert len(train) >= 3000 and len(val) >= 300
    assert 0.07 <= len(val) / (len(train) + len(val)) <= 0.13
    assert all(stats["dropped"][reason] > 0 for reason in
               ("service", "deleted_account", "forwarded", "media_only", "url_only", "too_long", "no_context", "duplicate"))
    assert not [t.text for r in train + val for t in [*r.context, r.reply] if URL.search(t.text)]


def test_the_persona_gets_enough_records_in_a_recognisable_style(prepared):
    train, val, stats = prepared["persona"]
    assert len(train) >= 1200 and len(val) >= 100
    replies = [r.reply.text for r in train + val]
    assert sum(t.startswith("ну смотри") for t in replies) / len(replies) > 0.6
    assert sum("классика" in t for t in replies) / len(replies) > 0.4
    assert stats["authors"][0]["author"] == PERSONA_ID


def test_no_record_answers_its_own_author_and_every_turn_keeps_the_message_cap(prepared):
    """Issue 11.5: 58 of the persona's 1,594 training records followed its own message, and context
    turns ran up to 477 characters while replies were capped at 200."""
    for name in ("all", "persona"):
        train, val, stats = prepared[name]
        assert not [r.source for r in train + val if r.context[-1].author == r.reply.author]
        assert max(len(t.text) for r in train + val for t in [*r.context, r.reply]) <= PrepareOptions().max_message_chars
        assert stats["dropped"]["merged"] > 0 and stats["dropped"]["own_turn"] > 0


def test_validation_conversations_share_no_message_with_training(prepared):
    """A context turn is a message; none of the messages train records use may appear in val."""
    (chat,) = load_export(SAMPLE)
    times = {m.id: m.timestamp for m in chat.messages}
    window = PrepareOptions().window_minutes * 60
    train, val, _ = prepared["all"]
    for side, other in ((train, val), (val, train)):
        replies = {(r.reply.author, r.reply.text): [] for r in other}
        for r in other:
            replies[(r.reply.author, r.reply.text)].append(r.source.message_id)
        for record in side:
            reply_time = times[record.source.message_id]
            for turn in record.context:
                # The same words by the same author in the other split must be another message:
                # one outside this record's window (a repeat from another day), not this one.
                for message_id in replies.get((turn.author, turn.text), []):
                    assert not (0 <= reply_time - times[message_id] <= window), (record.source, message_id)
