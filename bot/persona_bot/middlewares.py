"""What cuts across handlers: observing updates (metrics, in-flight count for a graceful
shutdown), handling a chat's messages one at a time, loading the chat's settings from the
store, remembering the messages no handler answers, and per-sender rate limiting of every
update the bot acts on (shared by every replica through the store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from aiogram import BaseMiddleware, Dispatcher
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.types import CallbackQuery, Message, TelegramObject

from persona_bot import metrics
from persona_bot.filters import author_of
from persona_bot.settings import BotSettings
from persona_bot.store import ChatSettings, Store, StoreUnavailable
from personafleet.prompt import TimedTurn

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class UpdateObserver(BaseMiddleware):
    """Outer update middleware: stamps `received_at`, counts outcomes, and knows how many
    updates are in flight so shutdown can wait for them."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        data["received_at"] = time.perf_counter()
        self.in_flight += 1
        self._idle.clear()
        metrics.IN_FLIGHT.inc()
        outcome = "error"
        try:
            result = await handler(event, data)
            outcome = "ignored" if result is UNHANDLED else "handled"
            return result
        finally:
            metrics.UPDATES.labels(outcome).inc()
            metrics.IN_FLIGHT.dec()
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no update is in flight; False if `timeout` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class ChatSettingsMiddleware(BaseMiddleware):
    """Outer message middleware: gives filters and handlers the chat's `chat_settings` and the
    `persona` it talks to. With the database down, the defaults apply."""

    def __init__(self, store: Store, settings: BotSettings) -> None:
        self.store = store
        self.settings = settings

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Message)
        try:
            chat_settings = await self.store.chat_settings(event.chat.id)
        except StoreUnavailable:
            chat_settings = ChatSettings()
        data["chat_settings"] = chat_settings
        chosen = chat_settings.persona
        data["persona"] = chosen if chosen in self.settings.available_personas else self.settings.persona
        return await handler(event, data)


class RememberUnanswered(BaseMiddleware):
    """Outer message middleware (inside the chat's settings): a text message no handler took -
    group chatter not addressed to the bot - still goes into the chat's history, so the next
    reply sees the conversation as `persona prepare` sees a chat's export (one author's burst is
    one turn). Commands, recordings and rate-limited messages are not kept; with the database
    down the message is simply not kept."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        result = await handler(event, data)
        assert isinstance(event, Message)
        text = " ".join((event.text or "").split())
        if result is UNHANDLED and text and not text.startswith("/"):
            turn = TimedTurn(role="user", text=text, time=event.date.timestamp(), author=author_of(event))
            with suppress(StoreUnavailable):
                await self.store.hear(event.chat.id, data["persona"], turn)
        return result


class RateLimiter:
    """The rate limit: `capacity` updates per sender, refilled evenly over `period` seconds. The
    buckets live in the store (`Store.take_turn`), so every replica counts against the same limit and
    a restart resets nothing; while the database is down each replica falls back to its own buckets
    in memory, so the limit still holds, per replica."""

    FORGET_EVERY_SECONDS = 600.0

    def __init__(self, capacity: int, period: float, store: Store | None = None) -> None:
        self.capacity, self.period, self.store = capacity, period, store
        self.local = LocalBuckets(capacity, period)
        self._forget_at = time.monotonic() + self.FORGET_EVERY_SECONDS

    async def wait(self, sender_id: int) -> float:
        """Seconds until `sender_id` may send again; 0: this update is allowed (and counted)."""
        if self.store is not None:
            try:
                wait = await self.store.take_turn(sender_id, self.capacity, self.period)
                if time.monotonic() >= self._forget_at:
                    self._forget_at = time.monotonic() + self.FORGET_EVERY_SECONDS
                    await self.store.forget_full_buckets()
                return wait
            except StoreUnavailable:
                pass
        return 0.0 if self.local.allow(sender_id) else self.local.retry_after(sender_id)


class LocalBuckets:
    """A token bucket per sender in this process's memory: the fallback while the database is down."""

    def __init__(self, capacity: int, period: float) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self._buckets: dict[int, tuple[float, float]] = {}  # user -> (tokens, last update)

    def allow(self, user_id: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(user_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self._buckets[user_id] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > 10_000:
            self._forget_idle(now)
        return allowed

    def retry_after(self, user_id: int) -> float:
        tokens, _ = self._buckets.get(user_id, (self.capacity, 0.0))
        return max(0.0, (1 - tokens) / self.rate)

    def _forget_idle(self, now: float) -> None:
        """Users whose bucket has refilled are indistinguishable from new ones: drop them."""
        full = [
            user for user, (tokens, last) in self._buckets.items() if tokens + (now - last) * self.rate >= self.capacity
        ]
        for user in full:
            del self._buckets[user]


class RateLimitMiddleware(BaseMiddleware):
    """Inner middleware on every event type of the dispatcher (`limit_every_update`), so every
    update a handler takes counts - commands and votes too, not just the messages the persona
    answers - while ignored group chatter costs nothing. Over the limit the handler does not run
    and the sender is told once per window (a reply to a message, an alert on a vote)."""

    def __init__(self, limiter: RateLimiter, settings: BotSettings) -> None:
        self.limiter = limiter
        self.settings = settings
        self._warned: dict[int, float] = {}

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        # Who is posting: a message sent on behalf of a chat carries a placeholder user shared by
        # everyone doing so (@GroupAnonymousBot, @Channel_Bot), so the sending chat is the key.
        sender = getattr(event, "sender_chat", None) or data.get("event_from_user") or data.get("event_chat")
        wait = 0.0 if sender is None else await self.limiter.wait(sender.id)
        if not wait:
            if sender is not None:
                self._warned.pop(sender.id, None)
            return await handler(event, data)
        metrics.REPLIES.labels(data.get("persona", self.settings.persona), metrics.NO_VERSION, "rate_limited").inc()
        now = time.monotonic()
        if self._warned.get(sender.id, 0.0) < now:
            self._warned[sender.id] = now + wait
            note = f"You're writing faster than I can think 🙂 Give me {max(1, round(wait))} s, please."
            if isinstance(event, Message):
                await event.reply(note)
            elif isinstance(event, CallbackQuery):
                await event.answer(note, show_alert=True)
        return None


def limit_every_update(dispatcher: Dispatcher, limiter: RateLimiter, settings: BotSettings) -> None:
    """One rate limit for every kind of update (message, callback query, ...): a middleware on the
    dispatcher's observers applies to the handlers of every router."""
    middleware = RateLimitMiddleware(limiter, settings)
    for name, observer in dispatcher.observers.items():
        if name not in ("update", "error"):
            observer.middleware(middleware)


class OneAtATimePerChat(BaseMiddleware):
    """Outer message middleware: a chat's messages are handled one after another, so each reply
    sees the previous exchange in the history and /clear cannot interleave with a reply.
    Different chats run in parallel."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}  # chat -> (lock, users)

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Message)
        chat_id = event.chat.id
        lock, users = self._locks.get(chat_id, (asyncio.Lock(), 0))
        self._locks[chat_id] = (lock, users + 1)
        try:
            async with lock:
                return await handler(event, data)
        finally:
            lock, users = self._locks[chat_id]
            if users == 1:
                del self._locks[chat_id]
            else:
                self._locks[chat_id] = (lock, users - 1)
