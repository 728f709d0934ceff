"""Private chats: replies that use the stored history, /clear, restarts, limits, metrics."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client import REGISTRY

from persona_bot.store import Exchange, Store
from personafleet.prompt import CONTEXT_WINDOW_SECONDS, MESSAGE_CHARS, TimedTurn
from personafleet.routing import conversation_key


async def test_private_reply_uses_the_stored_history(running_bot, telegram, model, postgres_database):
    ok = {"persona": "devops-dude", "version": "1", "outcome": "ok"}
    before = REGISTRY.get_sample_value("persona_bot_replies_total", ok) or 0.0
    async with running_bot() as service:
        commands = await telegram.wait_calls("setMyCommands")
        assert {c["command"] for c in json.loads(commands[0]["commands"])} >= {"start", "help", "clear", "clear_context", "persona", "insanity"}

        telegram.message("/start", chat_id=7)
        telegram.message("how do I restart nginx?", chat_id=7)
        sent = await telegram.wait_sent(2)
        assert "devops-dude" in sent[0]["text"]
        assert sent[1]["text"] == "[devops-dude] re: how do I restart nginx?"
        assert sent[1]["reply_markup"]["inline_keyboard"][0][0]["text"] == "👍"

        telegram.message("and apache?", chat_id=7)
        await telegram.wait_sent(3)
        persona, request = model.requests[-1]
        assert persona == "devops-dude"
        # One opaque key per chat and persona (sticky canary routing): no raw chat id leaves the bot.
        assert request.conversation == model.requests[-2][1].conversation == conversation_key(7, "devops-dude")
        assert len(request.conversation) == 24 and int(request.conversation, 16)  # a hash, not the chat id
        assert [(t.role, t.text) for t in request.context] == [
            ("user", "how do I restart nginx?"),
            ("persona", "[devops-dude] re: how do I restart nginx?"),
        ]
        assert request.message == "and apache?"

        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{service.metrics_port}/metrics")).text
            ready = await http.get(f"http://127.0.0.1:{service.metrics_port}/readyz")
        assert 'persona_bot_replies_total{outcome="ok",persona="devops-dude",version="1"}' in metrics
        assert REGISTRY.get_sample_value("persona_bot_replies_total", ok) - before == 2
        assert "persona_bot_reply_latency_seconds_bucket" in metrics
        assert ready.status_code == 200 and ready.json() == {"ready": True, "database": "up"}

    store = Store(postgres_database)
    await store.open()
    try:
        stored = await store.history(7, "devops-dude")
    finally:
        await store.close()
    assert [t.text for t in stored][-2:] == ["and apache?", "[devops-dude] re: and apache?"]


async def test_clear_forgets_the_conversation(running_bot, telegram, model):
    async with running_bot():
        telegram.message("remember me", chat_id=8)
        await telegram.wait_sent(1)
        telegram.message("/clear", chat_id=8)
        sent = await telegram.wait_sent(2)
        assert "forgotten" in sent[1]["text"]
        telegram.message("who am I?", chat_id=8)
        await telegram.wait_sent(3)
        assert model.requests[-1][1].context == []
        telegram.message("/clear_context", chat_id=8)
        assert "forgotten" in (await telegram.wait_sent(4))[3]["text"]


async def test_history_survives_a_restart(running_bot, telegram, model):
    async with running_bot():
        telegram.message("my server is called kraken", chat_id=9)
        await telegram.wait_sent(1)
    async with running_bot():
        telegram.message("what is it called?", chat_id=9)
        await telegram.wait_sent(2)
    assert [t.text for t in model.requests[-1][1].context] == [
        "my server is called kraken",
        "[devops-dude] re: my server is called kraken",
    ]


async def test_persona_switch_keeps_separate_histories(running_bot, telegram, model):
    async with running_bot():
        telegram.message("hello devops", chat_id=10)
        await telegram.wait_sent(1)
        telegram.message("/persona", chat_id=10)
        listing = (await telegram.wait_sent(2))[1]["text"]
        assert "➤ devops-dude" in listing
        # What answers as the chat's persona, asked of the fleet without generating (issue 26).
        assert ("devops-dude: version 1, base ai-forever/FRED-T5-large, trained 2026-12-01 14:03 UTC, knows 1 fact."
                in listing)
        model.failing = True
        telegram.message("/persona", chat_id=10)
        assert "can't tell which version of devops-dude" in (await telegram.wait_sent(3))[2]["text"]
        model.failing = False
        telegram.message("/persona nobody", chat_id=10)
        assert "don't know" in (await telegram.wait_sent(4))[3]["text"]
        telegram.message("/persona avtobus", chat_id=10)
        assert "Switched to avtobus" in (await telegram.wait_sent(5))[4]["text"]
        telegram.message("hello bus", chat_id=10)
        await telegram.wait_sent(6)
    persona, request = model.requests[-1]
    assert persona == "avtobus" and request.persona == "avtobus" and request.context == []


async def test_limits_long_messages_replies_and_rate(running_bot, telegram, model):
    async with running_bot(MAX_REPLY_CHARS="20", RATE_LIMIT_MESSAGES="2", RATE_LIMIT_SECONDS="60"):
        telegram.message("x" * (MESSAGE_CHARS + 500) + " the end", chat_id=11)
        sent = await telegram.wait_sent(1)
        request = model.requests[-1][1]
        # Cut to the per-message cap training contexts have (issue 11.5), keeping its end.
        assert len(request.message) == MESSAGE_CHARS and request.message.endswith("the end")
        assert len(sent[0]["text"]) == 20 and sent[0]["text"].endswith("…")

        for text in ("two", "three", "four"):
            telegram.message(text, chat_id=11)
        sent = await telegram.wait_sent(3)
        await telegram.wait_calls("getUpdates", len(telegram.method_calls("getUpdates")) + 2)
        assert len(model.requests) == 2  # "three" and "four" never reached the model
        assert sum("faster than I can think" in m["text"] for m in telegram.sent) == 1  # told once


async def test_only_history_inside_the_training_window_is_sent(running_bot, telegram, model, postgres_database):
    """Training contexts reach back 3 hours: turns stored earlier than that before the new message
    are not sent (and are deleted as the new message is stored)."""
    now = time.time()
    store = Store(postgres_database)
    await store.open()
    try:
        for message_id, age, text in ((1, CONTEXT_WINDOW_SECONDS + 600, "yesterday"), (2, 3600, "an hour ago")):
            await store.hear(12, "devops-dude", TimedTurn(role="user", text=text, time=now - age, author="user12"))
            await store.record(Exchange(
                chat_id=12, message_id=message_id, persona="devops-dude", model_version="1", context=[],
                message=text, reply=f"re: {text}", reply_time=now - age + 5,
            ))
        stored = [t.text for t in await store.history(12, "devops-dude")]
    finally:
        await store.close()
    assert stored == ["yesterday", "re: yesterday", "an hour ago", "re: an hour ago"]
    async with running_bot():
        telegram.message("and now?", chat_id=12)
        await telegram.wait_sent(1)
    request = model.requests[-1][1]
    assert [t.text for t in request.context] == ["an hour ago", "re: an hour ago"] and request.message == "and now?"


async def test_the_rate_limit_holds_across_replicas_and_restarts(running_bot, telegram, model):
    """The buckets live in the shared database: what one replica counted, the next one (a second
    replica, or the same one restarted) still counts."""
    limit = {"RATE_LIMIT_MESSAGES": "2", "RATE_LIMIT_SECONDS": "60"}
    async with running_bot(**limit):
        for text in ("one", "two"):
            telegram.message(text, chat_id=14)
        await telegram.wait_sent(2)
    async with running_bot(**limit):
        telegram.message("three", chat_id=14)
        sent = await telegram.wait_sent(3)
    assert len(model.requests) == 2 and "faster than I can think" in sent[2]["text"]


async def test_the_rate_limit_counts_commands_and_votes(running_bot, telegram, model):
    async with running_bot(RATE_LIMIT_MESSAGES="2", RATE_LIMIT_SECONDS="60"):
        telegram.message("hello", chat_id=12)
        reply = (await telegram.wait_sent(1))[0]
        for _ in range(3):
            telegram.message("/help", chat_id=12)
        sent = await telegram.wait_sent(3)
        await telegram.wait_calls("getUpdates", len(telegram.method_calls("getUpdates")) + 2)
        assert len(telegram.sent) == 3  # one /help answered, one note, the third dropped silently
        assert "faster than I can think" in sent[2]["text"]

        # Votes are updates too (another user in the same chat has a bucket of their own).
        for _ in range(3):
            telegram.vote(reply, user_id=13)
        await telegram.wait_calls("answerCallbackQuery", 3)
        await telegram.wait_calls("getUpdates", len(telegram.method_calls("getUpdates")) + 2)
        answers = [call["text"] for call in telegram.method_calls("answerCallbackQuery")]
        assert sum("Thanks" in text for text in answers) == 2  # votes run concurrently: any order
        assert sum("faster than I can think" in text for text in answers) == 1 and len(answers) == 3
