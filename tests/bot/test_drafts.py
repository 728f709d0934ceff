"""Replies shown while they are generated: drafts in private chats, the stop button, one message
in groups, a stream that breaks off - against the fake Bot API and a streaming stub model."""

from __future__ import annotations

import asyncio




def words(count: int) -> str:
    return " ".join(f"word{i}" for i in range(count))


async def test_a_private_reply_grows_in_throttled_drafts_then_arrives_as_one_message(running_bot, telegram, model):
    model.words, model.word_delay = 12, 0.05  # ~0.6 s of streaming
    async with running_bot(DRAFT_INTERVAL_SECONDS="0.2") as service:
        sent = telegram.message("расскажи что-нибудь", chat_id=7)
        [reply] = await telegram.wait_sent(1)
        history = await service.store.history(7, "devops-dude")
    drafts = telegram.drafts
    assert reply["text"] == words(12)  # the final event's reply, whole
    assert 2 <= len(drafts) <= 5, [d["text"] for d in drafts]  # throttled: ~0.6 s / 0.2 s, not one per word
    assert {d["draft_id"] for d in drafts} == {sent["message"]["message_id"]} and all(d["can_stop"] for d in drafts)
    texts = [d["text"] for d in drafts]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:])) and texts[-1] != reply["text"]
    assert max(telegram.draft_at) < telegram.sent_at[0]  # no draft lands after the message
    assert [(t.role, t.text) for t in history] == [("user", "расскажи что-нибудь"), ("persona", words(12))]


async def test_the_stop_button_ends_the_reply_with_what_was_shown(running_bot, telegram, model):
    model.words, model.word_delay = 200, 0.05  # ~10 s unless stopped
    async with running_bot(DRAFT_INTERVAL_SECONDS="0.1") as service:
        sent = telegram.message("говори долго", chat_id=8)
        await telegram.wait_calls("sendMessageDraft", 2)
        telegram.stop_generation(8, sent["message"]["message_id"])
        [reply] = await telegram.wait_sent(1, timeout=5)
        history = await service.store.history(8, "devops-dude")
        await asyncio.sleep(0.3)  # the stub notices the closed stream at its next word
    shown = telegram.drafts[-1]["text"]
    assert reply["text"].startswith(shown) and len(reply["text"].split()) < 200
    assert [t.text for t in history] == ["говори долго", reply["text"]]
    assert model.cancelled == 1  # the stream was closed: the server retires the row


async def test_groups_get_one_message_and_no_drafts(running_bot, telegram, model):
    model.words, model.word_delay = 6, 0.02
    async with running_bot():
        telegram.message("что скажешь?", chat_id=-100, chat_type="group", mention=True)
        [reply] = await telegram.wait_sent(1)
    assert reply["text"] == words(6) and telegram.drafts == []
    assert telegram.method_calls("sendMessageDraft") == []


async def test_a_stream_that_breaks_off_is_asked_once_more_and_stored_once(running_bot, telegram, model):
    model.words, model.break_streams = 8, 1  # the first stream dies after two words (a worker restart)
    async with running_bot(DRAFT_INTERVAL_SECONDS="0.1") as service:
        telegram.message("привет", chat_id=9)
        [reply] = await telegram.wait_sent(1)
        history = await service.store.history(9, "devops-dude")
    assert reply["text"] == words(8) and len(model.requests) == 2
    assert [t.text for t in history] == ["привет", words(8)]


async def test_two_broken_streams_get_an_apology_and_store_no_reply(running_bot, telegram, model):
    from persona_bot.routers.chat import MODEL_DOWN

    model.words, model.break_streams = 8, 2
    # Another persona than the fault tests', whose counters of apologies start from zero.
    async with running_bot(PERSONA="avtobus") as service:
        telegram.message("привет", chat_id=10)
        [reply] = await telegram.wait_sent(1)
        history = await service.store.history(10, "avtobus")
    assert reply["text"] == MODEL_DOWN and [t for t in history if t.role == "persona"] == []  # no reply kept


async def test_the_fake_bot_api_refuses_drafts_where_telegram_does(telegram):
    import httpx

    from tests.bot.fake_telegram import BOT_TOKEN

    async with httpx.AsyncClient(base_url=f"{telegram.url}/bot{BOT_TOKEN}") as http:
        group = await http.post("/sendMessageDraft", data={"chat_id": "-5", "draft_id": "3", "text": "x"})
        zero = await http.post("/sendMessageDraft", data={"chat_id": "5", "draft_id": "0", "text": "x"})
        long = await http.post("/sendMessageDraft", data={"chat_id": "5", "draft_id": "3", "text": "x" * 4097})
        thinking = await http.post("/sendMessageDraft", data={"chat_id": "5", "draft_id": "3", "text": ""})
    assert [r.status_code for r in (group, zero, long)] == [400, 400, 400]
    assert thinking.json() == {"ok": True, "result": True}
