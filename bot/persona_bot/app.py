"""Assembling the bot: the aiogram `Bot` (pointed at Telegram or a custom Bot API server) and the
`Dispatcher` with its routers, middlewares and dependencies."""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.methods import (
    AnswerCallbackQuery,
    DeleteWebhook,
    GetChatMember,
    GetFile,
    GetMe,
    GetUpdates,
    SendChatAction,
    SendMessage,
    SetMyCommands,
    SetWebhook,
)
from aiogram.methods.base import Response

from persona_bot.middlewares import (
    ChatSettingsMiddleware,
    OneAtATimePerChat,
    RateLimiter,
    RememberUnanswered,
    UpdateObserver,
    limit_every_update,
)
from persona_bot.routers import admin, chat, commands, feedback, persona, voice
from persona_bot.settings import BotSettings
from persona_bot.store import Store
from personafleet.asr_client import AsrClient
from personafleet.client import InferenceClient

# aiogram parses every Bot API answer as `Response[<the method's result type>]`, and pydantic
# caches such parametrized models only weakly: after each garbage collection the next call
# rebuilds the class (~5-10 ms of CPU, measured with benchmarks/bot.py). Holding them keeps
# the cache warm for the methods the bot calls.
RESPONSE_TYPES = [
    Response[method.__returning__]
    for method in (GetMe, GetUpdates, SendMessage, SendChatAction, AnswerCallbackQuery, GetChatMember,
                   SetMyCommands, SetWebhook, DeleteWebhook, GetFile)
]


def build_bot(settings: BotSettings) -> Bot:
    session = AiohttpSession()
    if settings.telegram_api_url:
        session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    return Bot(settings.bot_token.get_secret_value(), session=session)


def build_dispatcher(
    settings: BotSettings, store: Store, client: InferenceClient, observer: UpdateObserver, asr: AsrClient | None = None
) -> Dispatcher:
    """A dispatcher whose handlers get `settings`, `store`, `client` and `asr` as arguments."""
    dispatcher = Dispatcher(settings=settings, store=store, client=client, asr=asr)
    dispatcher.update.outer_middleware(observer)
    # A chat's messages are handled one after another (each reply must see the previous
    # exchange); the chat's settings are read inside that turn, and a message nobody answered
    # is kept in the history after it.
    dispatcher.message.outer_middleware(OneAtATimePerChat())
    dispatcher.message.outer_middleware(ChatSettingsMiddleware(store, settings))
    dispatcher.message.outer_middleware(RememberUnanswered(store))
    limit_every_update(dispatcher, RateLimiter(settings.rate_limit_messages, settings.rate_limit_seconds, store), settings)
    dispatcher.include_routers(
        commands.create_router(),
        persona.create_router(),
        admin.create_router(),
        feedback.create_router(),
        chat.create_router(),  # last: it takes any text the others did not
    )
    if asr is not None:  # VOICE=false: recordings stay unanswered, as before voice support
        dispatcher.include_router(voice.create_router())
    return dispatcher
