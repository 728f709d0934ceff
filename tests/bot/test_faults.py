"""Faults degrade answers, never the bot: a slow or dead model, a database that goes away and
comes back, a shutdown while a reply is being written."""

from __future__ import annotations

import asyncio

import httpx

from persona_bot.routers.chat import MODEL_DOWN, NO_MEMORY


async def scrape(service, name: str) -> str:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{service.metrics_port}/metrics")).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


async def test_model_down_or_slow_gets_an_apology_and_the_bot_stays_up(running_bot, telegram, model):
    async with running_bot(INFERENCE_TIMEOUT="0.3") as service:
        port = int(model.url.rsplit(":", 1)[1])
        await model.stop()
        telegram.message("are you there?", chat_id=31)
        assert (await telegram.wait_sent(1))[0]["text"] == MODEL_DOWN

        await model.start(port)
        model.delay = 1.0  # slower than INFERENCE_TIMEOUT
        telegram.message("still there?", chat_id=31)
        assert (await telegram.wait_sent(2))[1]["text"] == MODEL_DOWN

        model.delay = 0.0
        telegram.message("and now?", chat_id=31)
        # The unanswered messages were heard: with the new one they are one burst, one turn.
        assert (await telegram.wait_sent(3))[2]["text"] == "[devops-dude] re: are you there? still there? and now?"
        counted = await scrape(service, "persona_bot_replies_total")
    assert 'outcome="inference_unavailable",persona="devops-dude",version="none"} 2.0' in counted


async def test_database_outage_mid_conversation(running_bot, telegram, model, postgres_server):
    async with running_bot() as service:
        telegram.message("remember: the password is hunter2", chat_id=32)
        await telegram.wait_sent(1)
        await asyncio.sleep(0.2)  # let the exchange be stored

        with postgres_server.stopped():
            telegram.message("what's the password?", chat_id=32)
            sent = await telegram.wait_sent(2)
            assert sent[1]["text"] == NO_MEMORY + "[devops-dude] re: what's the password?"
            assert model.requests[-1][1].context == []
            telegram.message("hello?", chat_id=32)
            assert (await telegram.wait_sent(3))[2]["text"] == "[devops-dude] re: hello?"  # said once
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{service.metrics_port}/readyz")
            assert ready.status_code == 200 and ready.json()["database"] == "down"
            assert "persona_bot_store_up 0.0" in await scrape(service, "persona_bot_store_up")

        telegram.message("and now?", chat_id=32)
        assert (await telegram.wait_sent(4))[3]["text"] == "[devops-dude] re: and now?"
        assert [t.text for t in model.requests[-1][1].context] == [
            "remember: the password is hunter2",
            "[devops-dude] re: remember: the password is hunter2",
        ]
        assert "persona_bot_store_up 1.0" in await scrape(service, "persona_bot_store_up")


async def test_stopping_finishes_the_reply_in_flight(running_bot, telegram, model):
    model.delay = 0.8
    async with running_bot():
        telegram.message("slow question", chat_id=33)
        await model.wait_for_request(timeout=2)
        assert model.requests and not telegram.sent
        assert (await telegram.wait_calls("sendChatAction"))[0]["action"] == "typing"  # a slow model: "typing…"
    # The block's exit asked the bot to stop while the model was still working.
    assert [m["text"] for m in telegram.sent] == ["[devops-dude] re: slow question"]


async def test_bot_starts_without_its_database_and_migrates_once_it_is_there(running_bot, telegram, model, postgres_server):
    with postgres_server.stopped():
        async with running_bot() as service:
            telegram.message("anyone home?", chat_id=34)
            assert (await telegram.wait_sent(1))[0]["text"] == NO_MEMORY + "[devops-dude] re: anyone home?"
            postgres_server.start()
            telegram.message("now?", chat_id=34)
            assert (await telegram.wait_sent(2))[1]["text"] == "[devops-dude] re: now?"
            telegram.message("and the history?", chat_id=34)
            await telegram.wait_sent(3)
            assert [t.text for t in model.requests[-1][1].context] == ["now?", "[devops-dude] re: now?"]
            assert service.store.available
            postgres_server.stop()  # stopped() starts it again
