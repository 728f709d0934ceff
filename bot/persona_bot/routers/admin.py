"""/insanity on|off: in groups, answer every message instead of only mentions and replies.
Only the chat's admins may switch it (checked with getChatMember)."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.enums import ChatType
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from persona_bot.filters import IsChatAdmin
from persona_bot.store import ChatSettings, Store, StoreUnavailable


async def private(message: Message) -> None:
    await message.answer("Insanity mode is for groups. Here I answer every message anyway.")


async def not_admin(message: Message) -> None:
    await message.reply("Only this chat's admins can switch insanity mode.")


async def insanity(message: Message, command: CommandObject, chat_settings: ChatSettings, store: Store) -> None:
    choice = (command.args or "").strip().lower()
    if choice not in ("on", "off"):
        state = "on" if chat_settings.insanity else "off"
        await message.reply(f"Insanity mode is {state}. Use /insanity on or /insanity off.")
        return
    try:
        await store.set_insanity(message.chat.id, choice == "on")
    except StoreUnavailable:
        await message.reply("I can't save that right now (my database is down). Try again in a minute.")
        return
    if choice == "on":
        await message.reply("Insanity mode on: I'll answer every message here. 🤪")
    else:
        await message.reply("Insanity mode off: I'll answer only when mentioned or replied to.")


def create_router() -> Router:
    router = Router(name="admin")
    router.message.register(private, Command("insanity"), F.chat.type == ChatType.PRIVATE)
    router.message.register(not_admin, Command("insanity", magic=F.args), ~IsChatAdmin())
    router.message.register(insanity, Command("insanity"))
    return router
