"""Done-when of issue 13: a real voice message (espeak-ng speech, Opus in OGG at 48 kHz mono,
like Telegram's) through the fake Bot API to the real bot, transcribed by the real tiny Whisper on
real TorchServe, answered by the real persona; the persona's request carries the words."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from persona_bot.routers.chat import MODEL_DOWN, MODEL_REFUSED
from persona_bot.routers.voice import COULD_NOT_HEAR
from persona_training.asr_model import synthesize
from personafleet import audio
from tests.fixtures.asr import trained_sentences


@pytest.mark.slow
async def test_a_voice_message_is_heard_and_answered(running_bot, telegram, asr_torchserve, asr_model, postgres_database):
    sentence = trained_sentences(asr_model)[0]
    voice = audio.encode(synthesize(sentence))
    serving = {
        "INFERENCE_URL": asr_torchserve.inference_url,
        "INFERENCE_TOKEN": "",
        "INFERENCE_TOKEN_FILE": str(asr_torchserve.options.inference_token_file),
        "INFERENCE_TIMEOUT": "60",
        "ASR_TIMEOUT": "60",
        "PERSONA": asr_torchserve.persona,
        "PERSONAS": asr_torchserve.persona,
    }
    async with running_bot(**serving):
        telegram.recording(voice, duration=2, chat_id=81)
        reply = (await telegram.wait_sent(1, timeout=120))[0]
        assert reply["text"] not in (MODEL_DOWN, MODEL_REFUSED, COULD_NOT_HEAR)
        telegram.recording(b"\0" * 4000, duration=1, chat_id=81)  # no audio in it
        assert (await telegram.wait_sent(2, timeout=60))[1]["text"] == COULD_NOT_HEAR
    await asyncio.sleep(0.1)
    connection = await asyncpg.connect(postgres_database)
    try:
        rows = await connection.fetch("SELECT persona, message, voice FROM replies ORDER BY id")
    finally:
        await connection.close()
    # What the persona was asked (and what the history keeps) is what was said.
    assert [tuple(row) for row in rows] == [(asr_torchserve.persona, sentence, True)]
