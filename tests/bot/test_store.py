"""The history store when several bot replicas (webhook mode) share one database."""

from __future__ import annotations

from persona_bot.store import Exchange, Store
from personafleet.prompt import PromptTemplate


def exchange(message_id: int, text: str, context: list) -> Exchange:
    return Exchange(chat_id=5, message_id=message_id, persona="devops-dude", model_version="1",
                    context=context, message=text, reply=f"re: {text}")


async def test_replicas_keep_each_others_exchanges_and_a_clear_stays_cleared(postgres_database):
    budget = PromptTemplate(max_context_turns=6)
    first, second = Store(postgres_database, budget=budget), Store(postgres_database, budget=budget)
    await first.open()
    await second.open()
    try:
        # Both replicas loaded the same (empty) history, then answered different messages.
        seen = await first.history(5, "devops-dude")
        await first.record(exchange(1, "one", seen))
        await second.record(exchange(2, "two", seen))
        assert [t.text for t in await first.history(5, "devops-dude")] == ["one", "re: one", "two", "re: two"]

        for number in range(3, 6):  # the newest max_context_turns turns are kept
            await first.record(exchange(number, f"m{number}", []))
        assert [t.text for t in await first.history(5, "devops-dude")] == ["m3", "re: m3", "m4", "re: m4", "m5", "re: m5"]

        # /clear on one replica while the other was answering with the old history loaded.
        loaded = await second.history(5, "devops-dude")
        await first.clear_history(5, "devops-dude")
        await second.record(exchange(9, "late", loaded))
        assert [t.text for t in await first.history(5, "devops-dude")] == ["late", "re: late"]
    finally:
        await first.close()
        await second.close()


async def test_a_recreated_database_is_an_outage_then_migrated_again(postgres_database):
    import asyncpg
    import pytest

    from persona_bot.store import StoreUnavailable

    store = Store(postgres_database)
    await store.open()
    try:
        await store.record(exchange(1, "one", []))
        connection = await asyncpg.connect(postgres_database)
        await connection.execute("DROP TABLE votes, replies, histories, chats, schema_migrations CASCADE")
        await connection.close()
        with pytest.raises(StoreUnavailable):
            await store.history(5, "devops-dude")
        assert await store.history(5, "devops-dude") == []  # the schema is back, the bot answers again
        assert store.available
    finally:
        await store.close()
