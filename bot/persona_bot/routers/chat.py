"""The conversation itself: stored history + the new message -> the model -> a reply with
vote buttons -> the exchange stored. Faults degrade the answer, never the bot.

In private chats the reply is shown while it is generated (drafts, `persona_bot.drafts`) and the
user may stop it: what was shown is then the reply. In groups it arrives as one message:
`sendMessageDraft` exists for private chats only, and editing a sent message a few times a second
would notify and re-render for every member (and count against the group's edit limits), so
everyone waits for the whole reply there. Only the final reply is sent as a message and stored.
"""

from __future__ import annotations

import logging
import time

from aiogram import Bot, Router
from aiogram.enums import ChatType
from aiogram.types import Message, MessageGenerationStopped, ReplyParameters
from aiogram.utils.chat_action import ChatActionSender

from persona_bot import metrics
from persona_bot.drafts import TELEGRAM_MAX_CHARS, Drafted, Generations, drafted_reply
from persona_bot.filters import AddressedToBot, author_of
from persona_bot.routers.feedback import VOTE_KEYBOARD
from persona_bot.settings import BotSettings
from persona_bot.store import Exchange, Store, StoreUnavailable
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable, StreamInterrupted
from personafleet.inference import GenerationOptions, InferenceRequest
from personafleet.prompt import TimedTurn, conversation, fit_context
from personafleet.routing import conversation_key

logger = logging.getLogger(__name__)

MODEL_DOWN = "Sorry, I can't think right now - my model isn't answering. Please try again in a minute."
MODEL_REFUSED = "Sorry, I couldn't answer that one."
NO_MEMORY = "(My memory is offline for a moment, so I'm answering without our earlier conversation.)\n\n"
# "typing…" only once the model takes noticeably long: the Bot API recommends chat actions just
# for responses that take a noticeable time, and a quick reply would hide it at once anyway.
TYPING_AFTER_SECONDS = 0.3
STREAM_ATTEMPTS = 2  # a reply stream that breaks off (a worker restart) is asked for once more


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
    generations: Generations,
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
        conversation=conversation_key(chat_id, persona),  # one version answers the whole chat during a canary
        context=context,
        message=newest.text,
        generation=GenerationOptions(max_new_tokens=settings.max_reply_tokens),
    )
    started = time.perf_counter()
    try:
        async with ChatActionSender.typing(
            bot=bot, chat_id=chat_id, message_thread_id=message.message_thread_id, initial_sleep=TYPING_AFTER_SECONDS
        ):
            if message.chat.type == ChatType.PRIVATE:
                drafted = await _drafted(message, bot, persona, request, client, settings, received_at, generations)
            else:
                drafted = Drafted(await client.reply(persona, request), "")
    except (InferenceUnavailable, InferenceRejected) as exc:
        outcome = "inference_unavailable" if isinstance(exc, InferenceUnavailable) else "inference_rejected"
        metrics.MODEL_LATENCY.labels(persona, outcome).observe(time.perf_counter() - started)
        metrics.REPLIES.labels(persona, metrics.NO_VERSION, outcome).inc()
        logger.warning("No reply from %s: %s", persona, exc)
        await message.reply(MODEL_DOWN if outcome == "inference_unavailable" else MODEL_REFUSED)
        return
    outcome = "stopped" if drafted.stopped else "ok"
    metrics.MODEL_LATENCY.labels(persona, outcome).observe(time.perf_counter() - started)
    if drafted.stopped and not drafted.shown.strip():
        metrics.REPLIES.labels(persona, drafted.version or metrics.NO_VERSION, outcome).inc()
        return  # stopped before a word was shown: nothing to keep
    text = drafted.shown if drafted.final is None else drafted.final.reply
    model_version = drafted.final.model_version if drafted.final is not None else drafted.version

    note = NO_MEMORY if store.outage_notice_due(chat_id) else ""
    reply = cap(text, min(settings.max_reply_chars, TELEGRAM_MAX_CHARS - len(note)))
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
    metrics.replied(persona, model_version, outcome)
    metrics.REPLY_LATENCY.labels(persona).observe(time.perf_counter() - received_at)
    exchange = Exchange(
        chat_id, sent.message_id, persona, model_version, context, newest.text, reply, sent.date.timestamp(), voice
    )
    try:
        await store.record(exchange, update_history=remembered)
    except StoreUnavailable:
        logger.warning("Reply in chat not stored: database unavailable")


async def _drafted(
    message: Message, bot: Bot, persona: str, request: InferenceRequest, client: InferenceClient,
    settings: BotSettings, received_at: float, generations: Generations,
) -> Drafted:
    """The reply streamed into drafts (one draft id per reply: the message it answers); a stream
    that breaks off is asked for once more under the same draft, which the new text replaces."""
    chat_id, draft_id = message.chat.id, message.message_id
    stop = generations.start(chat_id, draft_id)
    try:
        for attempt in range(STREAM_ATTEMPTS):
            try:
                return await drafted_reply(bot, client, persona, request, chat_id=chat_id, draft_id=draft_id,
                                           thread_id=message.message_thread_id, interval=settings.draft_interval_seconds,
                                           stop=stop, received_at=received_at)
            except StreamInterrupted as exc:
                if attempt + 1 == STREAM_ATTEMPTS:
                    raise
                logger.warning("Reply stream in chat %s broke off (%s); asking once more", chat_id, exc)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        generations.end(chat_id, draft_id)


async def stop_generation(event: MessageGenerationStopped, generations: Generations) -> None:
    """The user pressed a draft's stop button: end that reply where it is."""
    if not generations.stop(event.chat.id, event.draft_id):
        logger.info("Stop for draft %s in chat %s: no reply is being generated there", event.draft_id, event.chat.id)


def create_router() -> Router:
    router = Router(name="chat")
    router.message.register(answer, AddressedToBot())
    router.stopped_message_generation.register(stop_generation)
    return router
