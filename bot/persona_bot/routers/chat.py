"""The conversation itself: stored history + the new message -> the model -> a reply with
vote buttons -> the exchange stored. Faults degrade the answer, never the bot."""

from __future__ import annotations

import logging
import time

from aiogram import Bot, Router
from aiogram.enums import ChatType
from aiogram.types import Message, ReplyParameters
from aiogram.utils.chat_action import ChatActionSender

from persona_bot import metrics
from persona_bot.filters import AddressedToBot, author_of
from persona_bot.routers.feedback import VOTE_KEYBOARD
from persona_bot.settings import BotSettings
from persona_bot.store import Exchange, Store, StoreUnavailable
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable
from personafleet.inference import GenerationOptions, InferenceRequest
from personafleet.prompt import TimedTurn, conversation, fit_context

logger = logging.getLogger(__name__)

MODEL_DOWN = "Sorry, I can't think right now - my model isn't answering. Please try again in a minute."
MODEL_REFUSED = "Sorry, I couldn't answer that one."
NO_MEMORY = "(My memory is offline for a moment, so I'm answering without our earlier conversation.)\n\n"
# "typing…" only once the model takes noticeably long: the Bot API recommends chat actions just
# for responses that take a noticeable time, and a quick reply would hide it at once anyway.
TYPING_AFTER_SECONDS = 0.3
TELEGRAM_MAX_CHARS = 4096  # sendMessage's limit


def cap(text: str, limit: int) -> str:
    """A reply Telegram accepts: not empty, at most `limit` characters."""
    text = text.strip() or "🤷"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


async def answer(
    message: Message,
    bot: Bot,
    text: str,
    persona: str,
    store: Store,
    client: InferenceClient,
    settings: BotSettings,
    received_at: float,
    voice: bool = False,
) -> None:
    """Answer one message; `text` is what the model should see (see `AddressedToBot`), `voice`
    marks it as a voice message's transcript in the store."""
    chat_id = message.chat.id
    now, budget = message.date.timestamp(), store.budget
    said = TimedTurn(role="user", text=text, time=now, author=author_of(message))
    try:
        history, remembered = await store.hear(chat_id, persona, said), True
    except StoreUnavailable:
        history, remembered = [said], False
    # The history is shaped as training contexts are (time window, a burst of one author's
    # messages merged, message cap: `personafleet.prompt.conversation`); then the prompt's own
    # budget decides what fits.
    turns = conversation(history, now)
    *context, newest = fit_context(turns, budget.max_context_turns, budget.max_context_chars)
    request = InferenceRequest(
        persona=persona,
        context=context,
        message=newest.text,
        generation=GenerationOptions(max_new_tokens=settings.max_reply_tokens),
    )
    started = time.perf_counter()
    try:
        async with ChatActionSender.typing(
            bot=bot, chat_id=chat_id, message_thread_id=message.message_thread_id, initial_sleep=TYPING_AFTER_SECONDS
        ):
            response = await client.reply(persona, request)
    except (InferenceUnavailable, InferenceRejected) as exc:
        outcome = "inference_unavailable" if isinstance(exc, InferenceUnavailable) else "inference_rejected"
        metrics.MODEL_LATENCY.labels(persona, outcome).observe(time.perf_counter() - started)
        metrics.REPLIES.labels(persona, outcome).inc()
        logger.warning("No reply from %s: %s", persona, exc)
        await message.reply(MODEL_DOWN if outcome == "inference_unavailable" else MODEL_REFUSED)
        return
    metrics.MODEL_LATENCY.labels(persona, "ok").observe(time.perf_counter() - started)

    note = NO_MEMORY if store.outage_notice_due(chat_id) else ""
    reply = cap(response.reply, min(settings.max_reply_chars, TELEGRAM_MAX_CHARS - len(note)))
    # In groups the reply quotes the message it answers, so people see who it is for.
    quote = None
    if message.chat.type != ChatType.PRIVATE:
        quote = ReplyParameters(message_id=message.message_id, allow_sending_without_reply=True)
    sent = await bot.send_message(
        chat_id,
        note + reply,
        reply_parameters=quote,
        message_thread_id=message.message_thread_id,
        reply_markup=VOTE_KEYBOARD,
    )
    metrics.REPLIES.labels(persona, "ok").inc()
    metrics.REPLY_LATENCY.labels(persona).observe(time.perf_counter() - received_at)
    exchange = Exchange(
        chat_id, sent.message_id, persona, response.model_version, context, newest.text, reply, sent.date.timestamp(), voice
    )
    try:
        await store.record(exchange, update_history=remembered)
    except StoreUnavailable:
        logger.warning("Reply in chat not stored: database unavailable")


def create_router() -> Router:
    router = Router(name="chat")
    router.message.register(answer, AddressedToBot())
    return router
