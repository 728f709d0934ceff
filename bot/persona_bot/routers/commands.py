"""/start, /help and /clear (alias /clear_context, the seed bots' name for it). /clear forgets the
chat's conversations with every persona, for training too (`Store.forget_chat`); in groups that is
everyone's shared history, so only the chat's admins may (like /insanity)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from persona_bot.filters import IsChatAdmin
from persona_bot.store import Store, StoreUnavailable

# What clients show in the command menu (registered with setMyCommands at start).
BOT_COMMANDS = [
    BotCommand(command="start", description="Say hello"),
    BotCommand(command="help", description="What I can do"),
    BotCommand(command="clear", description="Forget this chat's conversation so far, for training too (groups: admins)"),
    BotCommand(command="clear_context", description="Same as /clear"),
    BotCommand(command="persona", description="List personas or switch: /persona NAME"),
    BotCommand(command="insanity", description="Groups: answer every message (/insanity on|off, admins)"),
    BotCommand(command="feedback", description="May rated replies here train me? (/feedback on|off, admins)"),
]

HELP = (
    "I'm {persona}, a chatbot trained on real conversations.\n\n"
    "In private chats I answer every message. In groups I answer when you mention me or reply to "
    "me - or to everything, if an admin turns on /insanity.\n\n"
    "Rate my answers with 👍/👎: good ones teach the next version of me - from groups unless an "
    "admin turns /feedback off, from private chats only if you turn /feedback on.\n\n"
    "/clear - forget this chat's conversation so far, with every persona, for training too (in groups: admins)\n"
    "/persona - list personas, /persona NAME - switch\n"
    "/insanity on|off - (groups, admins) answer every message\n"
    "/feedback on|off - (admins) may rated replies from this chat train me"
)


async def start(message: Message, persona: str) -> None:
    await message.answer(f"Hi! I'm {persona}. Just write to me. /help tells what else I can do.")


async def help_(message: Message, persona: str) -> None:
    await message.answer(HELP.format(persona=persona))


async def not_admin(message: Message) -> None:
    await message.reply("Only this chat's admins can clear its history.")


async def clear(message: Message, store: Store) -> None:
    try:
        await store.forget_chat(message.chat.id)
    except StoreUnavailable:
        await message.answer("I can't reach my memory right now, so I can't forget either. Try again in a minute.")
        return
    await message.answer("Done - I've forgotten our conversation. Let's start over.")


def create_router() -> Router:
    router = Router(name="commands")
    router.message.register(start, CommandStart())
    router.message.register(help_, Command("help"))
    router.message.register(not_admin, Command("clear", "clear_context"), ~IsChatAdmin())
    router.message.register(clear, Command("clear", "clear_context"))
    return router
