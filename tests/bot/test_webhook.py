"""Webhook mode: Telegram's updates arrive over HTTP with the secret token; anything without
the right secret is refused before it reaches a handler."""

from __future__ import annotations

import httpx

WEBHOOK = {
    "BOT_MODE": "webhook",
    "WEBHOOK_URL": "https://bot.example.com/telegram/hook",
    "WEBHOOK_SECRET": "s3cret-Token_1",
    "WEBHOOK_PORT": "0",
}


async def test_webhook_checks_the_secret_of_every_update(running_bot, telegram, model):
    async with running_bot(**WEBHOOK) as service:
        registered = (await telegram.wait_calls("setWebhook"))[0]
        assert registered["url"] == WEBHOOK["WEBHOOK_URL"] and registered["secret_token"] == WEBHOOK["WEBHOOK_SECRET"]
        hook = f"http://127.0.0.1:{service.webhook_port}/telegram/hook"
        async with httpx.AsyncClient() as http:
            forged = telegram.message_update("forged", chat_id=41)
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                refused = await http.post(hook, json=forged, headers=headers)
                assert refused.status_code == 401
            genuine = telegram.message_update("genuine", chat_id=41)
            accepted = await http.post(hook, json=genuine, headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK["WEBHOOK_SECRET"]})
            assert accepted.status_code == 200
        sent = await telegram.wait_sent(1)
    assert [m["text"] for m in sent] == ["[devops-dude] re: genuine"]
    assert [r.message for _, r in model.requests] == ["genuine"]
    assert not telegram.method_calls("getUpdates")
