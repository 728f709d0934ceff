"""The bot against the real thing: TorchServe with the tiny persona, its inference-only key,
and a real Postgres."""

from __future__ import annotations

import asyncpg
import pytest

from persona_bot.routers.chat import MODEL_DOWN, MODEL_REFUSED


@pytest.mark.slow
async def test_bot_replies_through_torchserve(running_bot, telegram, torchserve, postgres_database):
    serving = {
        "INFERENCE_URL": torchserve.inference_url,
        "INFERENCE_TOKEN": "",  # unset: the key file is the source
        "INFERENCE_TOKEN_FILE": str(torchserve.options.inference_token_file),  # what `persona serve` hands clients
        "INFERENCE_TIMEOUT": "60",
        "PERSONA": torchserve.persona,
        "PERSONAS": torchserve.persona,
    }
    async with running_bot(**serving):
        telegram.message("привет, как дела?", chat_id=61)
        first = (await telegram.wait_sent(1, timeout=90))[0]
        assert first["text"] not in (MODEL_DOWN, MODEL_REFUSED)
        assert first["reply_markup"]["inline_keyboard"][0][0]["text"] == "👍"
        telegram.message("а что делаешь?", chat_id=61)
        second = (await telegram.wait_sent(2, timeout=90))[1]
        assert second["text"] not in (MODEL_DOWN, MODEL_REFUSED)

    connection = await asyncpg.connect(postgres_database)
    try:
        rows = await connection.fetch("SELECT persona, model_version, context, message FROM replies ORDER BY id")
    finally:
        await connection.close()
    assert [(r["persona"], r["message"]) for r in rows] == [
        (torchserve.persona, "привет, как дела?"),
        (torchserve.persona, "а что делаешь?"),
    ]
    assert rows[0]["model_version"] == "1"
    assert '"привет, как дела?"' in rows[1]["context"]  # the second call carried the first exchange
