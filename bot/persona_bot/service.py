"""The running bot: Telegram (polling or webhook), the store, the model client and the health
server, started and stopped in the right order. SIGTERM stops taking updates, lets the ones in
flight finish (up to SHUTDOWN_GRACE_SECONDS), then closes everything."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from contextlib import suppress

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from persona_bot.app import build_bot, build_dispatcher
from persona_bot.middlewares import UpdateObserver
from persona_bot.routers.commands import BOT_COMMANDS
from persona_bot.settings import BotSettings
from persona_bot.store import ExportRole, Store, StoreUnavailable
from persona_bot.web import health_app, serve
from personafleet.asr_client import AsrClient
from personafleet.client import InferenceClient
from personafleet.errors import PersonaError

logger = logging.getLogger(__name__)


class BotService:
    """One bot process. Tests and the benchmark run it in-process; `run_bot` adds the signals."""

    def __init__(self, settings: BotSettings, *, store: Store | None = None) -> None:
        self.settings = settings
        export_role = ExportRole(settings.feedback_export_role, settings.feedback_export_password.get_secret_value()) \
            if settings.feedback_export_role and settings.feedback_export_password else None
        self.store = store or Store(settings.database_url.get_secret_value(), timeout=settings.database_timeout,
                                    export_role=export_role)
        self.client = InferenceClient(
            settings.inference_url,
            token=settings.inference_token.get_secret_value() if settings.inference_token else None,
            token_file=settings.inference_token_file,
            timeout=settings.inference_timeout,
            retries=settings.inference_retries,
            model=settings.inference_model,
        )
        self.asr = AsrClient(
            settings.asr_url or settings.inference_url,
            token=settings.inference_token.get_secret_value() if settings.inference_token else None,
            token_file=settings.inference_token_file,
            timeout=settings.asr_timeout,
            retries=settings.inference_retries,
        ) if settings.voice else None
        self.bot: Bot = build_bot(settings)
        self.observer = UpdateObserver()
        self.dispatcher = build_dispatcher(settings, self.store, self.client, self.observer, self.asr)
        self.dispatcher.startup.register(self._on_startup)
        self.dispatcher.shutdown.register(self._on_shutdown)
        self.ready = False
        self.metrics_port: int | None = None
        self.webhook_port: int | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the bot to shut down gracefully (what SIGTERM does)."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until `stop()`; Telegram API errors at start become a `PersonaError`."""
        await self.store.open()
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            logger.warning("Database not reachable yet (%s); answering without history until it is", exc)
        health, self.metrics_port = await serve(
            health_app(lambda: self.ready, lambda: self.store.available),
            self.settings.listen_host,
            self.settings.metrics_port,
        )
        logger.info("Metrics and health on http://%s:%d", self.settings.listen_host, self.metrics_port)
        try:
            if self.settings.bot_mode == "webhook":
                await self._serve_webhook()
            else:
                await self._poll()
        except TelegramAPIError as exc:
            raise PersonaError(f"Telegram Bot API: {exc}") from None
        finally:
            self.ready = False
            await health.cleanup()
            await self.bot.session.close()
            await self.client.aclose()
            if self.asr is not None:
                await self.asr.aclose()
            await self.store.close()

    async def _on_startup(self, bot: Bot) -> None:
        await bot.set_my_commands(BOT_COMMANDS)
        if self.settings.bot_mode == "webhook":
            await bot.set_webhook(
                self.settings.webhook_url,
                secret_token=self.settings.webhook_secret.get_secret_value(),
                allowed_updates=self.dispatcher.resolve_used_update_types(),
            )
        else:
            await bot.delete_webhook()
        me = await bot.me()
        # ~200k objects from start-up (aiogram's types, pydantic schemas) live as long as the
        # process; frozen, they leave the full collections, which otherwise stop the event loop
        # for ~100 ms every so often (the p99 of benchmarks/bot.py).
        gc.collect()
        gc.freeze()
        logger.info("@%s is up (%s mode)", me.username, self.settings.bot_mode)
        self.ready = True

    async def _on_shutdown(self) -> None:
        self.ready = False
        if self.observer.in_flight:
            logger.info("Finishing %d update(s) in flight", self.observer.in_flight)
        if not await self.observer.drained(self.settings.shutdown_grace_seconds):
            logger.warning(
                "Gave up on %d update(s) after %.0f s", self.observer.in_flight, self.settings.shutdown_grace_seconds
            )

    async def _poll(self) -> None:
        polling = asyncio.create_task(
            self.dispatcher.start_polling(self.bot, handle_signals=False, close_bot_session=False)
        )
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if polling.done():  # it failed (e.g. a bad token at start)
            stopping.cancel()
            polling.result()
            return
        try:
            await self.dispatcher.stop_polling()  # emits shutdown, which drains
        except RuntimeError:  # stopped before polling had started
            polling.cancel()
        with suppress(asyncio.CancelledError):
            await polling

    async def _serve_webhook(self) -> None:
        """Telegram POSTs updates to WEBHOOK_URL's path; aiogram checks the secret header of
        every one (401 on a mismatch) and processes it in the background."""
        app = web.Application()
        # Shutdown hooks run in the order added: the dispatcher's (which drains in-flight updates)
        # must come before the request handler's, which closes the bot's HTTP session.
        setup_application(app, self.dispatcher, bot=self.bot)
        SimpleRequestHandler(
            self.dispatcher, self.bot, secret_token=self.settings.webhook_secret.get_secret_value()
        ).register(app, path=self.settings.webhook_path)
        runner, self.webhook_port = await serve(app, self.settings.listen_host, self.settings.webhook_port)
        logger.info(
            "Webhook on http://%s:%d%s", self.settings.listen_host, self.webhook_port, self.settings.webhook_path
        )
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()  # stops listening, then emits shutdown, which drains


async def run_bot(settings: BotSettings) -> None:
    """`persona bot`: run until SIGTERM or SIGINT."""
    service = BotService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()
    logger.info("Stopped")
