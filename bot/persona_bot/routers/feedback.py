"""👍/👎 under every reply. A vote is stored with the reply it rates, one per user per reply;
voting again changes it. `persona export-feedback` turns well-rated replies into training data,
from the chats whose settings allow it: /feedback on|off (the chat's admins) decides, and without
a choice private chats stay out and groups are in (persona_bot.store.FEEDBACK_RULES)."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.enums import ChatType
from aiogram.filters import Command, CommandObject
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from persona_bot import metrics
from persona_bot.filters import IsChatAdmin
from persona_bot.settings import BotSettings
from persona_bot.store import ChatSettings, Store, StoreUnavailable


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
        rated = await store.vote(query.message.chat.id, query.message.message_id, query.from_user.id, value)
    except StoreUnavailable:
        metrics.FEEDBACK_VOTES.labels(settings.persona, metrics.NO_VERSION, "store_unavailable").inc()
        await query.answer("I can't save votes right now - please try again later.")
        return
    if rated is None:
        metrics.FEEDBACK_VOTES.labels(settings.persona, metrics.NO_VERSION, "unknown_reply").inc()
        await query.answer("I don't remember that reply, sorry.")
        return
    persona, version = rated
    metrics.FEEDBACK_VOTES.labels(persona, version, "up" if value > 0 else "down").inc()
    await query.answer("Thanks! 👍" if value > 0 else "Thanks, noted. 👎")


async def not_admin(message: Message) -> None:
    await message.reply("Only this chat's admins can decide whether its rated replies train me.")


async def training_choice(message: Message, command: CommandObject, chat_settings: ChatSettings, store: Store) -> None:
    choice = (command.args or "").strip().lower()
    if choice not in ("on", "off"):
        private = message.chat.type == ChatType.PRIVATE
        state = "are" if chat_settings.trains_on_feedback(private) else "are not"
        how = "chosen here" if chat_settings.feedback_training is not None else (
            "the default for private chats" if private else "the default for groups")
        await message.reply(f"Replies rated 👍 here {state} used to train my next version ({how}). "
                            "Use /feedback on or /feedback off.")
        return
    try:
        await store.set_feedback_training(message.chat.id, choice == "on")
    except StoreUnavailable:
        await message.reply("I can't save that right now (my database is down). Try again in a minute.")
        return
    if choice == "on":
        await message.reply("Done: replies rated 👍 here may now train my next version.")
    else:
        await message.reply("Done: nothing from this chat will train my next version.")


def create_router() -> Router:
    router = Router(name="feedback")
    router.callback_query.register(vote, Vote.filter())
    router.message.register(not_admin, Command("feedback", magic=F.args), ~IsChatAdmin())
    router.message.register(training_choice, Command("feedback"))
    return router
