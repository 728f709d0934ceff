"""A reply shown while it is generated: the model's stream becomes Telegram drafts.

`sendMessageDraft` (private chats only) shows an ephemeral preview - a 30-second draft, replaced
by the next one with the same `draft_id` - so the final `sendMessage` always follows. Drafts are
throttled (the first one as soon as there is text, then at most one per `interval`, never two in
flight: a slow Bot API call never holds up reading the stream). The draft offers a stop button
(`can_stop`); Telegram then sends a `stopped_message_generation` update, which `Generations`
turns into a stop for the reply being generated: the stream is closed (the server retires the
row at its next step) and what the user saw so far becomes the reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from persona_bot import metrics
from personafleet.client import InferenceClient, StreamInterrupted
from personafleet.inference import InferenceRequest, InferenceResponse

logger = logging.getLogger(__name__)

TELEGRAM_MAX_CHARS = 4096  # a message's and a draft's limit


class Generations:
    """The replies being generated in this process, by (chat, draft): what a stop button reaches."""

    def __init__(self) -> None:
        self._stops: dict[tuple[int, int], asyncio.Event] = {}

    def start(self, chat_id: int, draft_id: int) -> asyncio.Event:
        return self._stops.setdefault((chat_id, draft_id), asyncio.Event())

    def stop(self, chat_id: int, draft_id: int) -> bool:
        """True when a reply was being generated there (and is now told to stop)."""
        event = self._stops.get((chat_id, draft_id))
        if event is not None:
            event.set()
        return event is not None

    def end(self, chat_id: int, draft_id: int) -> None:
        self._stops.pop((chat_id, draft_id), None)


@dataclass
class Drafted:
    """How a streamed reply ended: the final event, or the text shown when the user stopped it."""

    final: InferenceResponse | None
    shown: str
    version: str = ""  # the version that answered (from the first preview)

    @property
    def stopped(self) -> bool:
        return self.final is None


async def drafted_reply(
    bot: Bot,
    client: InferenceClient,
    persona: str,
    request: InferenceRequest,
    *,
    chat_id: int,
    draft_id: int,
    thread_id: int | None,
    interval: float,
    stop: asyncio.Event,
    received_at: float,
) -> Drafted:
    """Stream the reply into drafts until its final event or the user's stop."""
    shown, version, sent_at, in_flight, failed = "", "", 0.0, None, False

    async def send(text: str) -> None:
        nonlocal failed
        try:
            await bot.send_message_draft(chat_id, draft_id, text=text[:TELEGRAM_MAX_CHARS],
                                         message_thread_id=thread_id, can_stop=True)
        except TelegramAPIError as exc:  # drafts refused: the final message still comes
            failed = True
            logger.warning("Draft not shown in chat %s: %s", chat_id, exc)

    events = client.stream(persona, request)
    next_event = asyncio.ensure_future(anext(events))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            await asyncio.wait({next_event, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                return Drafted(None, shown, version)
            try:
                event = next_event.result()
            except StopAsyncIteration:  # stream() itself raises first; kept for a stream that just ends
                raise StreamInterrupted("the reply stream ended without its final event") from None
            if isinstance(event, InferenceResponse):
                return Drafted(event, shown, event.model_version)
            shown, version = shown + event.delta, version or event.model_version or ""
            now = time.perf_counter()
            if shown.strip() and not failed and (in_flight is None or in_flight.done()) and now - sent_at >= interval:
                if not sent_at:
                    metrics.FIRST_DRAFT_LATENCY.labels(persona).observe(now - received_at)
                sent_at, in_flight = now, asyncio.ensure_future(send(shown))
            next_event = asyncio.ensure_future(anext(events))
    finally:
        stopping.cancel()
        next_event.cancel()
        await asyncio.gather(next_event, return_exceptions=True)
        await events.aclose()  # closes the connection: the server retires the row
        if in_flight is not None:  # the last draft lands before the final message, never after
            await asyncio.gather(in_flight, return_exceptions=True)
