"""👍/👎 votes are stored with the reply they rate (one per user, changeable), and
`persona export-feedback` turns the well-rated exchanges into training records."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg

from personafleet.prompt import record_turns
from personafleet.records import read_records

PERSONA_CLI = [sys.executable, "-m", "personafleet.cli"]


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
        telegram.message("hi", chat_id=21)
        telegram.message("is k8s hard?", chat_id=21)
        telegram.message("meh", chat_id=22)
        await telegram.wait_sent(3)
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
