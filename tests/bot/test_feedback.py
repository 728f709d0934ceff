"""👍/👎 votes are stored with the reply they rate (one per user, changeable), and
`persona export-feedback` turns the well-rated exchanges of chats that allow it into training
records, reporting what each rule kept out."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from prometheus_client import REGISTRY

from personafleet.prompt import record_turns
from personafleet.records import read_records

PERSONA_CLI = [sys.executable, "-m", "persona_cli"]


async def wait_for_replies_stored(dsn: str, count: int) -> None:
    """The bot stores a reply right after sending it; a vote can only rate a stored one."""
    connection = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            if await connection.fetchval("SELECT count(*) FROM replies") >= count:
                return
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    raise AssertionError(f"fewer than {count} replies stored")


async def test_votes_are_stored_and_exported(running_bot, telegram, model, postgres_database, tmp_path: Path):
    async with running_bot():
        telegram.message("/feedback on", chat_id=21)  # a private chat opts in
        await telegram.wait_sent(1)
        telegram.message("hi", chat_id=21)
        telegram.message("is k8s hard?", chat_id=21)
        telegram.message("/feedback on", chat_id=22)
        await telegram.wait_sent(3)
        telegram.message("meh", chat_id=22)
        await telegram.wait_sent(5)
        by_text = {m["text"]: m for m in telegram.sent}
        good = by_text["[devops-dude] re: is k8s hard?"]
        bad = by_text["[devops-dude] re: meh"]

        await wait_for_replies_stored(postgres_database, 3)

        telegram.vote(good, user_id=21, up=False)
        await telegram.wait_calls("answerCallbackQuery", 1)
        telegram.vote(good, user_id=21, up=True)  # changed their mind: still one vote
        telegram.vote(good, user_id=99, up=True)
        telegram.vote(bad, user_id=22, up=True)
        telegram.vote(bad, user_id=23, up=False)
        telegram.vote(bad, user_id=24, up=False)
        answers = await telegram.wait_calls("answerCallbackQuery", 6)
        assert sorted(a["text"] for a in answers) == ["Thanks! 👍"] * 3 + ["Thanks, noted. 👎"] * 3

    connection = await asyncpg.connect(postgres_database)
    votes = await connection.fetch("SELECT r.chat_id, v.user_id, v.value FROM votes v JOIN replies r ON r.id = v.reply_id")
    await connection.close()
    assert sorted(tuple(v) for v in votes) == [(21, 21, 1), (21, 99, 1), (22, 22, 1), (22, 23, -1), (22, 24, -1)]

    result = subprocess.run(
        [*PERSONA_CLI, "export-feedback", "--out", str(tmp_path), "--persona", "devops-dude", "--database-url", postgres_database],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    records = read_records(tmp_path / "train.jsonl")
    assert len(records) == 1  # "meh" got more 👎 than 👍
    assert json.loads((tmp_path / "stats.json").read_text())["kept_out"]["not_rated_up"] == 1
    record = records[0]
    assert record.reply.text == "[devops-dude] re: is k8s hard?"
    assert record.source.chat_id == 21 and record.source.message_id == good["message_id"]
    assert [(t.role, t.text) for t in record_turns(record)] == [
        ("user", "hi"), ("persona", "[devops-dude] re: hi"), ("user", "is k8s hard?"),
    ]

    other = subprocess.run(
        [*PERSONA_CLI, "export-feedback", "--out", str(tmp_path / "none"), "--persona", "avtobus", "--database-url", postgres_database],
        capture_output=True, text=True, timeout=60,
    )
    assert other.returncode == 0 and (tmp_path / "none" / "train.jsonl").read_text() == ""


async def test_votes_are_counted_by_the_version_that_wrote_the_reply(running_bot, telegram, model, postgres_database):
    def votes(version: str, outcome: str) -> float | None:
        return REGISTRY.get_sample_value("persona_bot_feedback_votes_total",
                                         {"persona": "devops-dude", "version": version, "outcome": outcome})

    model.version = "71"
    async with running_bot():
        telegram.message("first", chat_id=41)
        await telegram.wait_sent(1)
        # A version's vote series exist from its first reply (so `increase()` sees its first votes).
        assert votes("71", "up") == 0.0 and votes("71", "down") == 0.0
        model.version = "72"
        telegram.message("second", chat_id=41)
        await telegram.wait_sent(2)
        await wait_for_replies_stored(postgres_database, 2)
        first, second = telegram.sent
        telegram.vote(first, user_id=1, up=True)
        telegram.vote(second, user_id=1, up=False)
        telegram.vote(second, user_id=2, up=False)
        await telegram.wait_calls("answerCallbackQuery", 3)
    assert (votes("71", "up"), votes("71", "down"), votes("72", "up"), votes("72", "down")) == (1.0, 0.0, 0.0, 2.0)
    assert REGISTRY.get_sample_value("persona_bot_replies_total",
                                     {"persona": "devops-dude", "version": "72", "outcome": "ok"}) == 1.0


GROUP, QUIET_GROUP = -300, -400
ADMIN, MEMBER = 501, 502


async def test_only_chats_that_allow_it_become_training_data(running_bot, telegram, model, postgres_database,
                                                             tmp_path: Path):
    telegram.admins[QUIET_GROUP] = {ADMIN}
    async with running_bot():
        telegram.message("/feedback off", chat_id=QUIET_GROUP, user_id=MEMBER, chat_type="group")
        assert "Only this chat's admins" in (await telegram.wait_sent(1))[0]["text"]
        telegram.message("/feedback off", chat_id=QUIET_GROUP, user_id=ADMIN, chat_type="group")
        assert "nothing from this chat" in (await telegram.wait_sent(2))[1]["text"]
        telegram.message("/feedback", chat_id=31)
        assert "are not used" in (await telegram.wait_sent(3))[2]["text"]  # private: out by default
        telegram.message("/feedback on", chat_id=32)
        await telegram.wait_sent(4)

        telegram.message("alpha", chat_id=GROUP, user_id=MEMBER, chat_type="group", mention=True)
        telegram.message("bravo", chat_id=QUIET_GROUP, user_id=MEMBER, chat_type="group", mention=True)
        telegram.message("charlie", chat_id=31)
        telegram.message("delta", chat_id=32)
        await telegram.wait_sent(8)
        await wait_for_replies_stored(postgres_database, 4)
        for sent in telegram.sent[4:]:
            telegram.vote(sent, user_id=MEMBER)
        await telegram.wait_calls("answerCallbackQuery", 4)

    result = subprocess.run(
        [*PERSONA_CLI, "export-feedback", "--out", str(tmp_path), "--database-url", postgres_database],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(r.context[-1].text for r in read_records(tmp_path / "train.jsonl")) == ["alpha", "delta"]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats == {"exported": 2, "kept_out": {"forgotten": 0, "not_rated_up": 0, "chat_opted_out": 1,
                                                  "private_chat_not_opted_in": 1}}
    assert "kept out: forgotten 0, not_rated_up 0, chat_opted_out 1, private_chat_not_opted_in 1" in result.stdout


def export(database_url: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PERSONA_CLI, "export-feedback", "--out", str(out), "--database-url", database_url, *args],
                          capture_output=True, text=True, timeout=60)


async def test_clear_keeps_everything_said_before_it_out_of_training(running_bot, telegram, model, postgres_database,
                                                                     tmp_path: Path):
    """/clear says "forgotten": every exchange of the chat before it (with every persona) loses its
    text and is never exported; votes on it still count."""
    async with running_bot():
        telegram.message("/feedback on", chat_id=41)
        await telegram.wait_sent(1)
        telegram.message("my password is hunter2", chat_id=41)
        await telegram.wait_sent(2)
        telegram.message("/persona avtobus", chat_id=41)
        await telegram.wait_sent(3)
        telegram.message("my card is 4242", chat_id=41)
        sent = await telegram.wait_sent(4)
        await wait_for_replies_stored(postgres_database, 2)
        telegram.vote(sent[1], user_id=41)
        telegram.vote(sent[3], user_id=41)
        await telegram.wait_calls("answerCallbackQuery", 2)
        telegram.message("/clear", chat_id=41)
        assert "forgotten" in (await telegram.wait_sent(5))[4]["text"]
        telegram.vote(sent[1], user_id=42)  # a vote that outlives /clear: counted
        assert (await telegram.wait_calls("answerCallbackQuery", 3))[2]["text"] == "Thanks! 👍"
        telegram.message("after the clear", chat_id=41)
        after = (await telegram.wait_sent(6))[5]
        await wait_for_replies_stored(postgres_database, 3)
        telegram.vote(after, user_id=41)
        await telegram.wait_calls("answerCallbackQuery", 4)

    result = export(postgres_database, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r.context[-1].text for r in read_records(tmp_path / "train.jsonl")] == ["after the clear"]
    assert json.loads((tmp_path / "stats.json").read_text())["kept_out"]["forgotten"] == 2
    connection = await asyncpg.connect(postgres_database)
    try:
        dump = json.dumps([dict(row) for row in await connection.fetch("SELECT context, message, reply FROM replies")])
        votes = await connection.fetchval("SELECT count(*) FROM votes")
    finally:
        await connection.close()
    assert "hunter2" not in dump and "4242" not in dump  # the text is gone, not just hidden
    assert votes == 4


EXPORT_ROLE, EXPORT_PASSWORD = "feedback_export", "export-secret"


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}").geturl()


async def test_training_jobs_export_as_a_role_that_reads_only_what_the_export_needs(
        running_bot, telegram, model, postgres_database, tmp_path: Path):
    """The bot creates the export role (FEEDBACK_EXPORT_ROLE/_PASSWORD); `persona export-feedback`
    runs as it, without migrating; the role reads no history, no other column, and writes nothing."""
    async with running_bot(FEEDBACK_EXPORT_ROLE=EXPORT_ROLE, FEEDBACK_EXPORT_PASSWORD=EXPORT_PASSWORD):
        telegram.message("/feedback on", chat_id=51)
        await telegram.wait_sent(1)
        telegram.message("ship it?", chat_id=51)
        sent = await telegram.wait_sent(2)
        await wait_for_replies_stored(postgres_database, 1)
        telegram.vote(sent[1], user_id=51)
        await telegram.wait_calls("answerCallbackQuery", 1)

    export_url = as_role(postgres_database, EXPORT_ROLE, EXPORT_PASSWORD)
    result = export(export_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r.reply.text for r in read_records(tmp_path / "train.jsonl")] == ["[devops-dude] re: ship it?"]
    connection = await asyncpg.connect(export_url)
    try:
        for statement in ("SELECT turns FROM histories", "SELECT persona FROM chats", "SELECT created_at FROM replies",
                          "INSERT INTO votes (reply_id, user_id, value) VALUES (1, 7, 1)", "UPDATE replies SET reply = ''",
                          "DELETE FROM votes", "TRUNCATE replies", "CREATE TABLE loot (x int)",
                          "INSERT INTO schema_migrations (version, name) VALUES (99, 'x')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
    finally:
        await connection.close()


async def test_an_export_never_migrates_and_names_a_database_the_bot_has_not_migrated(postgres_database, tmp_path: Path):
    from persona_bot.store import Store

    store = Store(postgres_database)
    await store.open()
    await store.ping()  # the bot migrates
    await store.close()
    connection = await asyncpg.connect(postgres_database)
    try:
        newest = await connection.fetchval("DELETE FROM schema_migrations WHERE version = "
                                           "(SELECT max(version) FROM schema_migrations) RETURNING version")
        result = export(postgres_database, tmp_path)
        still_behind = await connection.fetchval("SELECT max(version) FROM schema_migrations")
    finally:
        await connection.close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"schema version {newest - 1}, this needs {newest}" in result.stderr and "start the bot once" in result.stderr
    assert still_behind == newest - 1
