"""When handlers run: is a message addressed to the bot, is its sender a chat admin."""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.enums import ChatMemberStatus, ChatType, MessageEntityType
from aiogram.filters import Filter
from aiogram.types import Message

from persona_bot.store import ChatSettings


class AddressedToBot(Filter):
    """A text message (not a command) for the bot. Private chats: always. Groups: when the bot is
    @mentioned, when the message replies to one of the bot's messages, or when the chat is in
    insanity mode. Passes the handler `text` with the mention removed, which is what the model
    should see.

    One async filter on purpose: aiogram runs synchronous filters such as `F.text` in a thread
    (`asyncio.to_thread`), a thread hop per filter per message (seen in benchmarks/bot.py)."""

    async def __call__(self, message: Message, bot: Bot, chat_settings: ChatSettings) -> bool | dict[str, Any]:
        text = message.text or ""
        if not text or text.startswith("/"):
            return False
        if message.chat.type == ChatType.PRIVATE:
            return {"text": text}
        me = await bot.me()  # cached by aiogram after the first call
        mention = f"@{me.username}".lower() if me.username else None
        mentioned = False
        for entity in message.entities or []:
            if entity.type == MessageEntityType.MENTION and mention:
                if entity.extract_from(text).lower() == mention:
                    mentioned = True
                    text = text.replace(entity.extract_from(text), " ", 1)
            elif entity.type == MessageEntityType.TEXT_MENTION and entity.user and entity.user.id == me.id:
                mentioned = True
        text = " ".join(text.split())
        if (mentioned or replies_to(message, me.id) or chat_settings.insanity) and text:
            return {"text": text}
        return False


def author_of(message: Message) -> str:
    """Who wrote a message, as Telegram Desktop's export names authors (`user42`, `channel7` for
    one sent on behalf of a chat): the history merges one author's bursts as `persona prepare` does."""
    if message.sender_chat is not None:
        return f"channel{message.sender_chat.id}"
    return f"user{message.from_user.id}" if message.from_user else f"chat{message.chat.id}"


def replies_to(message: Message, user_id: int) -> bool:
    """The message replies to one of `user_id`'s messages."""
    reply = message.reply_to_message
    return bool(reply and reply.from_user and reply.from_user.id == user_id)


class VoiceForBot(Filter):
    """A voice message, audio file or video note for the bot: always in private chats; in groups
    when it replies to the bot or the chat is in insanity mode (a recording cannot @mention).
    Passes the handler `media` (the Voice, Audio or VideoNote)."""

    async def __call__(self, message: Message, bot: Bot, chat_settings: ChatSettings) -> bool | dict[str, Any]:
        media = message.voice or message.audio or message.video_note
        if media is None:
            return False
        if message.chat.type == ChatType.PRIVATE or chat_settings.insanity or replies_to(message, (await bot.me()).id):
            return {"media": media}
        return False


class IsChatAdmin(Filter):
    """The sender administers the chat (in a private chat the user owns it)."""

    async def __call__(self, message: Message, bot: Bot) -> bool:
        if message.chat.type == ChatType.PRIVATE:
            return True
        if message.from_user is None:
            return False
        member = await bot.get_chat_member(message.chat.id, message.from_user.id)
        return member.status in (ChatMemberStatus.CREATOR, ChatMemberStatus.ADMINISTRATOR)
