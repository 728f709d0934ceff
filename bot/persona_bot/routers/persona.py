"""/persona: list the personas this bot can be and say what the chat's one is (its serving
version, base, when it was trained, how many facts it knows), or switch the chat to another one."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from persona_bot.filters import IsChatAdmin
from persona_bot.settings import BotSettings
from persona_bot.store import Store, StoreUnavailable
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable


async def not_admin(message: Message) -> None:
    await message.reply("Only this chat's admins can switch my persona.")


async def describe(client: InferenceClient, persona: str) -> str:
    """One line on the version that answers as `persona` now, from the fleet (no generation)."""
    try:
        about = await client.about(persona)
    except InferenceRejected as exc:
        return f"{persona} is not served right now ({exc.error})."
    except InferenceUnavailable:
        return f"I can't tell which version of {persona} is serving: the model isn't answering."
    trained = f"trained {about.trained_at:%Y-%m-%d %H:%M} UTC" if about.trained_at else "training time unknown"
    facts = f"{about.facts} fact{'' if about.facts == 1 else 's'}"
    return f"{persona}: version {about.model_version}, base {about.base}, {trained}, knows {facts}."


async def persona(
    message: Message, command: CommandObject, persona: str, store: Store, settings: BotSettings, client: InferenceClient
) -> None:
    choice = (command.args or "").strip().lower()
    available = settings.available_personas
    if not choice:
        listing = "\n".join(f"{'➤' if name == persona else '•'} {name}" for name in available)
        await message.answer(f"Personas:\n{listing}\n\n{await describe(client, persona)}\nSwitch with /persona NAME.")
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
