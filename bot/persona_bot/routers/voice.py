"""Voice messages, audio files and video notes: download, decode, transcribe, then answer the
transcript exactly as if the user had typed it (`chat.answer`), marked as voice in the store.

Every fault ends in a short polite reply and nothing stored as the user's text: a recording over
the limits is refused before it is downloaded, one that does not decode or holds no words gets
"couldn't make that out", an ASR model that is down or too slow gets the model-down apology.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time

from aiogram import Bot, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import Audio as AudioFile, Message, VideoNote, Voice
from aiogram.utils.chat_action import ChatActionSender

from persona_bot import metrics
from persona_bot.filters import VoiceForBot
from persona_bot.drafts import Generations
from persona_bot.routers.chat import MODEL_DOWN, answer
from persona_bot.settings import BotSettings
from persona_bot.store import Store
from personafleet import audio
from personafleet.asr_client import AsrClient
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable

logger = logging.getLogger(__name__)

COULD_NOT_HEAR = "Sorry, I couldn't make that out. Could you say it again, or type it?"


def too_long(limit: float) -> str:
    return f"That's a bit long for me - I listen to voice messages up to {limit:g} seconds. Could you make it shorter?"


def too_large(limit: int) -> str:
    return f"That file is too big for me - I take recordings up to {limit / 2**20:.3g} MB."


async def fetch(bot: Bot, media: Voice | AudioFile | VideoNote, max_bytes: int) -> bytes | None:
    """The recording's bytes through getFile and the file URL; None when Telegram refuses it as too big."""
    try:
        file = await bot.get_file(media.file_id)
    except TelegramBadRequest as exc:
        if "too big" in exc.message.lower():
            return None
        raise
    if file.file_size is not None and file.file_size > max_bytes:
        return None
    buffer = io.BytesIO()
    await bot.download_file(file.file_path or "", buffer)
    return buffer.getvalue()


async def listen(
    message: Message,
    bot: Bot,
    media: Voice | AudioFile | VideoNote,
    persona: str,
    store: Store,
    client: InferenceClient,
    asr: AsrClient,
    settings: BotSettings,
    received_at: float,
    generations: Generations,
) -> None:
    """Turn the recording into text and answer it; every way it can fail gets its own reply."""
    limit = settings.voice_max_seconds
    if media.duration is not None and media.duration > limit:
        return await refuse(message, "too_long", too_long(limit))
    if media.file_size is not None and media.file_size > settings.voice_max_bytes:
        return await refuse(message, "too_large", too_large(settings.voice_max_bytes))
    async with ChatActionSender.typing(bot=bot, chat_id=message.chat.id, message_thread_id=message.message_thread_id):
        data = await fetch(bot, media, settings.voice_max_bytes)
        if data is None:
            return await refuse(message, "too_large", too_large(settings.voice_max_bytes))
        try:
            # Decoding is CPU work (FFmpeg): in a thread, so other chats' updates keep flowing.
            clip = await asyncio.to_thread(audio.decode, data, max_seconds=limit)
        except audio.AudioError as exc:
            logger.info("Undecodable recording in a chat: %s", exc)
            return await refuse(message, "undecodable", COULD_NOT_HEAR)
        if clip.seconds > limit + 1:  # the declared duration may lie; a second of slack for rounding
            return await refuse(message, "too_long", too_long(limit))
        metrics.VOICE_AUDIO_SECONDS.observe(clip.seconds)
        started = time.perf_counter()
        try:
            transcript = await asr.transcribe(clip, settings.asr_language)
        except (InferenceUnavailable, InferenceRejected) as exc:
            outcome = "unavailable" if isinstance(exc, InferenceUnavailable) else "rejected"
            metrics.ASR_LATENCY.labels(outcome).observe(time.perf_counter() - started)
            logger.warning("No transcript: %s", exc)
            if outcome == "rejected":
                return await refuse(message, "asr_rejected", COULD_NOT_HEAR)
            return await refuse(message, "asr_unavailable", MODEL_DOWN)
        metrics.ASR_LATENCY.labels("ok").observe(time.perf_counter() - started)
    text = " ".join(transcript.text.split())
    if not text:
        return await refuse(message, "empty", COULD_NOT_HEAR)
    metrics.VOICE_MESSAGES.labels("transcribed").inc()
    await answer(message, bot, text, persona, store, client, settings, received_at, generations, voice=True)


async def refuse(message: Message, outcome: str, reply: str) -> None:
    metrics.VOICE_MESSAGES.labels(outcome).inc()
    await message.reply(reply)


def create_router() -> Router:
    """Recordings count against the same rate limit as text: the dispatcher's, on every update."""
    router = Router(name="voice")
    router.message.register(listen, VoiceForBot())
    return router
