"""/persona: list the personas this bot can be, or switch the chat to another one."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from persona_bot.filters import IsChatAdmin
from persona_bot.settings import BotSettings
from persona_bot.store import Store, StoreUnavailable


async def not_admin(message: Message) -> None:
    await message.reply("Only this chat's admins can switch my persona.")


async def persona(message: Message, command: CommandObject, persona: str, store: Store, settings: BotSettings) -> None:
    choice = (command.args or "").strip().lower()
    available = settings.available_personas
    if not choice:
        listing = "\n".join(f"{'➤' if name == persona else '•'} {name}" for name in available)
        await message.answer(f"Personas:\n{listing}\n\nSwitch with /persona NAME.")
        return
    if choice not in available:
        await message.answer(f"I don't know {choice!r}. Choose one of: {', '.join(available)}.")
        return
    try:
        await store.set_persona(message.chat.id, choice)
    except StoreUnavailable:
        await message.answer("I can't save that right now (my database is down). Try again in a minute.")
        return
    await message.answer(f"Switched to {choice}. Each persona keeps its own conversation with this chat.")


def create_router() -> Router:
    router = Router(name="persona")
    router.message.register(not_admin, Command("persona", magic=F.args), ~IsChatAdmin())
    router.message.register(persona, Command("persona"))
    return router
