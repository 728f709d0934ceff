"""👍/👎 under every reply. A vote is stored with the reply it rates, one per user per reply;
voting again changes it. `persona export-feedback` turns well-rated replies into training data."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup

from persona_bot import metrics
from persona_bot.settings import BotSettings
from persona_bot.store import Store, StoreUnavailable


class Vote(CallbackData, prefix="vote"):
    value: int  # 1 or -1


# The same two buttons under every reply: the vote finds its reply by the message they sit under.
VOTE_KEYBOARD = InlineKeyboardMarkup(
    inline_keyboard=[
        [
            InlineKeyboardButton(text="👍", callback_data=Vote(value=1).pack()),
            InlineKeyboardButton(text="👎", callback_data=Vote(value=-1).pack()),
        ]
    ]
)


async def vote(query: CallbackQuery, callback_data: Vote, store: Store, settings: BotSettings) -> None:
    value = 1 if callback_data.value > 0 else -1
    if query.message is None:  # too old for Telegram to tell which message it was
        await query.answer("That message is too old to rate.")
        return
    try:
        persona = await store.vote(query.message.chat.id, query.message.message_id, query.from_user.id, value)
    except StoreUnavailable:
        metrics.FEEDBACK_VOTES.labels(settings.persona, "store_unavailable").inc()
        await query.answer("I can't save votes right now - please try again later.")
        return
    if persona is None:
        metrics.FEEDBACK_VOTES.labels(settings.persona, "unknown_reply").inc()
        await query.answer("I don't remember that reply, sorry.")
        return
    metrics.FEEDBACK_VOTES.labels(persona, "up" if value > 0 else "down").inc()
    await query.answer("Thanks! 👍" if value > 0 else "Thanks, noted. 👎")


def create_router() -> Router:
    router = Router(name="feedback")
    router.callback_query.register(vote, Vote.filter())
    return router
