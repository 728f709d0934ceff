"""The bot under test: the real Dispatcher against the fake Bot API, a stub model and a real
Postgres database of its own (fresh per test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from persona_bot.service import BotService
from persona_bot.settings import load_settings
from tests.bot.fake_telegram import BOT_TOKEN, FakeTelegram
from tests.bot.stub_model import STUB_TOKEN, StubModel


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def model() -> AsyncIterator[StubModel]:
    stub = StubModel()
    await stub.start()
    yield stub
    await stub.stop()


@pytest.fixture
def bot_env(telegram: FakeTelegram, model: StubModel, postgres_database: str) -> dict[str, str]:
    return {
        "BOT_TOKEN": BOT_TOKEN,
        "DATABASE_URL": postgres_database,
        "INFERENCE_URL": model.url,
        "INFERENCE_TOKEN": STUB_TOKEN,
        "INFERENCE_TIMEOUT": "1",
        "INFERENCE_RETRIES": "0",
        "TELEGRAM_API_URL": telegram.url,
        "PERSONA": "devops-dude",
        "PERSONAS": "devops-dude,avtobus",
        "METRICS_PORT": "0",
        "DATABASE_TIMEOUT": "1",
        "RATE_LIMIT_MESSAGES": "100",
    }


RunningBot = Callable[..., "asynccontextmanager[BotService]"]


@pytest.fixture
def running_bot(bot_env: dict[str, str]) -> RunningBot:
    """`async with running_bot(**ENV_OVERRIDES) as service:` - the bot is up (commands set,
    polling or webhook listening) inside the block and shut down gracefully after it."""

    @asynccontextmanager
    async def run(**overrides: str) -> AsyncIterator[BotService]:
        service = BotService(load_settings({**bot_env, **overrides}))
        task = asyncio.create_task(service.run())
        for _ in range(200):
            if service.ready or task.done():
                break
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        assert service.ready, "bot did not start"
        try:
            yield service
        finally:
            service.stop()
            await asyncio.wait_for(task, 10)

    return run
