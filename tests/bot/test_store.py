"""The history store when several bot replicas (webhook mode) share one database."""

from __future__ import annotations

import time

from persona_bot.store import HISTORY_MESSAGES, Exchange, Store
from personafleet.prompt import CONTEXT_WINDOW_SECONDS, TimedTurn

PERSONA = "devops-dude"


def said(text: str, at: float, author: str = "user42") -> TimedTurn:
    return TimedTurn(role="user", text=text, time=at, author=author)


def exchange(message_id: int, text: str, at: float) -> Exchange:
    return Exchange(chat_id=5, message_id=message_id, persona=PERSONA, model_version="1",
                    context=[], message=text, reply=f"re: {text}", reply_time=at)


async def texts(store: Store) -> list[str]:
    return [t.text for t in await store.history(5, PERSONA)]


async def test_replicas_keep_each_others_turns_and_a_clear_stays_cleared(postgres_database):
    first, second = Store(postgres_database), Store(postgres_database)
    await first.open()
    await second.open()
    now = time.time()
    try:
        # Two replicas each heard a message, then answered it: every turn is kept, in order.
        assert [t.text for t in await first.hear(5, PERSONA, said("one", now))] == ["one"]
        assert [t.text for t in await second.hear(5, PERSONA, said("two", now + 1))] == ["one", "two"]
        await first.record(exchange(1, "one", now + 2))
        await second.record(exchange(2, "two", now + 3))
        assert await texts(first) == ["one", "two", "re: one", "re: two"]
        assert (await first.history(5, PERSONA))[0].author == "user42"

        # /clear on one replica while the other was answering: what came before stays gone.
        await second.hear(5, PERSONA, said("late", now + 4))
        await first.forget_chat(5)
        await second.record(exchange(9, "late", now + 5))
        assert await texts(first) == ["re: late"]
    finally:
        await first.close()
        await second.close()


async def test_the_history_keeps_only_what_can_still_be_context(postgres_database):
    """Retention: the newest HISTORY_MESSAGES messages within the context window of the newest."""
    store = Store(postgres_database)
    await store.open()
    now = time.time()
    try:
        for number in range(HISTORY_MESSAGES + 5):
            await store.hear(5, PERSONA, said(f"m{number}", now + number))
        kept = await texts(store)
        assert kept == [f"m{number}" for number in range(5, HISTORY_MESSAGES + 5)]

        later = now + CONTEXT_WINDOW_SECONDS + 20  # m0..m19 are out of its window
        await store.hear(5, PERSONA, said("much later", later))
        assert await texts(store) == [f"m{number}" for number in range(20, HISTORY_MESSAGES + 5)] + ["much later"]
        await store.hear(5, PERSONA, said("next day", later + 2 * CONTEXT_WINDOW_SECONDS))
        assert await texts(store) == ["next day"]
    finally:
        await store.close()


async def test_a_recreated_database_is_an_outage_then_migrated_again(postgres_database):
    import asyncpg
    import pytest

    from persona_bot.store import StoreUnavailable

    store = Store(postgres_database)
    await store.open()
    try:
        await store.record(exchange(1, "one", time.time()))
        connection = await asyncpg.connect(postgres_database)
        await connection.execute("DROP TABLE votes, replies, histories, chats, rate_limits, schema_migrations CASCADE")
        await connection.close()
        with pytest.raises(StoreUnavailable):
            await store.history(5, PERSONA)
        assert await store.history(5, PERSONA) == []  # the schema is back, the bot answers again
        assert store.available
    finally:
        await store.close()
