"""Voice messages, audio files and video notes: download, decode, transcribe, then answer the
transcript exactly as if the user had typed it (`chat.answer`), marked as voice in the store.

Every fault ends in a short polite reply, a `persona_bot_voice_messages_total` outcome and nothing
stored as the user's text: a recording over the limits is refused before it is downloaded, one
Telegram does not hand over (lost, unknown file_id, expired link, network) says so and asks for it
again, one that does not decode or holds no words gets "couldn't make that out", an ASR model that
is down, too slow or not served at all gets the speech apology.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time

import aiohttp
from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramNotFound
from aiogram.types import Audio as AudioFile, Message, VideoNote, Voice
from aiogram.utils.chat_action import ChatActionSender

from persona_bot import metrics
from persona_bot.filters import VoiceForBot
from persona_bot.routers.chat import answer
from persona_bot.settings import BotSettings
from persona_bot.store import Store
from personafleet import audio
from personafleet.asr_client import AsrClient
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable

logger = logging.getLogger(__name__)

COULD_NOT_HEAR = "Sorry, I couldn't make that out. Could you say it again, or type it?"
SPEECH_UNAVAILABLE = "Sorry, speech recognition is unavailable right now. Please try again later, or type your message."
LOST = "Sorry, Telegram can't find that recording any more. Could you send it again?"
REFUSED = "Sorry, Telegram wouldn't give me that recording. Could you send it again?"
EXPIRED = "Sorry, that recording expired before I could fetch it. Could you send it again?"
UNFETCHED = "Sorry, I couldn't fetch that recording from Telegram just now. Please try again in a minute."


def too_long(limit: float) -> str:
    return f"That's a bit long for me - I listen to voice messages up to {limit:g} seconds. Could you make it shorter?"


def too_large(limit: int) -> str:
    return f"That file is too big for me - I take recordings up to {limit / 2**20:.3g} MB."


class NotFetched(Exception):
    """Telegram did not hand the recording over: the outcome for the metric, the reply for the user."""

    def __init__(self, outcome: str, reply: str):
        super().__init__(outcome)
        self.outcome, self.reply = outcome, reply


async def fetch(bot: Bot, media: Voice | AudioFile | VideoNote, max_bytes: int) -> bytes:
    """The recording's bytes through getFile and the file URL; `NotFetched` says why not."""
    try:
        file = await bot.get_file(media.file_id)
    except TelegramNotFound:
        raise NotFetched("file_not_found", LOST) from None
    except TelegramBadRequest as exc:
        reason = exc.message.lower()
        if "too big" in reason:
            raise NotFetched("too_large", too_large(max_bytes)) from None
        if "file_id" in reason:  # "invalid file_id", "wrong file_id or the file is temporarily unavailable"
            raise NotFetched("invalid_file_id", REFUSED) from None
        logger.warning("getFile refused a recording: %s", exc.message)
        raise NotFetched("fetch_failed", UNFETCHED) from None
    except TelegramAPIError as exc:  # network, Telegram's own errors, flood control
        logger.warning("getFile failed: %s", exc)
        raise NotFetched("fetch_failed", UNFETCHED) from None
    if file.file_size is not None and file.file_size > max_bytes:
        raise NotFetched("too_large", too_large(max_bytes))
    buffer = io.BytesIO()
    try:
        await bot.download_file(file.file_path or "", buffer)
    except aiohttp.ClientResponseError as exc:
        if exc.status == 404:  # the file_path link expired (Telegram keeps it for about an hour)
            raise NotFetched("download_not_found", EXPIRED) from None
        logger.warning("Downloading a recording failed: HTTP %s", exc.status)
        raise NotFetched("fetch_failed", UNFETCHED) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("Downloading a recording failed: %s", exc.__class__.__name__)
        raise NotFetched("fetch_failed", UNFETCHED) from None
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
) -> None:
    """Turn the recording into text and answer it; every way it can fail gets its own reply."""
    limit = settings.voice_max_seconds
    if media.duration is not None and media.duration > limit:
        return await refuse(message, "too_long", too_long(limit))
    if media.file_size is not None and media.file_size > settings.voice_max_bytes:
        return await refuse(message, "too_large", too_large(settings.voice_max_bytes))
    async with ChatActionSender.typing(bot=bot, chat_id=message.chat.id, message_thread_id=message.message_thread_id):
        try:
            data = await fetch(bot, media, settings.voice_max_bytes)
        except NotFetched as exc:
            return await refuse(message, exc.outcome, exc.reply)
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
            # TorchServe's 404 is for a model it does not serve, never for the audio (400/413).
            not_served = isinstance(exc, InferenceRejected) and exc.status == 404
            rejected = isinstance(exc, InferenceRejected) and not not_served
            metrics.ASR_LATENCY.labels("rejected" if rejected else "unavailable").observe(time.perf_counter() - started)
            logger.warning("No transcript: %s", exc)
            if rejected:
                return await refuse(message, "asr_rejected", COULD_NOT_HEAR)
            return await refuse(message, "asr_not_served" if not_served else "asr_unavailable", SPEECH_UNAVAILABLE)
        metrics.ASR_LATENCY.labels("ok").observe(time.perf_counter() - started)
    text = " ".join(transcript.text.split())
    if not text:
        return await refuse(message, "empty", COULD_NOT_HEAR)
    metrics.VOICE_MESSAGES.labels("transcribed").inc()
    await answer(message, bot, text, persona, store, client, settings, received_at, voice=True)


async def refuse(message: Message, outcome: str, reply: str) -> None:
    metrics.VOICE_MESSAGES.labels(outcome).inc()
    await message.reply(reply)


def create_router() -> Router:
    """Recordings count against the same rate limit as text: the dispatcher's, on every update."""
    router = Router(name="voice")
    router.message.register(listen, VoiceForBot())
    return router
