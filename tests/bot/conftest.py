"""The bot under test: the real Dispatcher against the fake Bot API, a stub model and a real
Postgres database of its own (fresh per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from persona_bot.service import BotService
from tests.bot.fake_telegram import BOT_TOKEN, FakeTelegram
from tests.fixtures.bot import bot_running
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


RunningBot = Callable[..., AbstractAsyncContextManager[BotService]]


@pytest.fixture
def running_bot(bot_env: dict[str, str]) -> RunningBot:
    """`async with running_bot(**ENV_OVERRIDES) as service:` - the bot is up (commands set,
    polling or webhook listening) inside the block and shut down gracefully after it."""

    def run(**overrides: str) -> AbstractAsyncContextManager[BotService]:
        return bot_running({**bot_env, **overrides})

    return run
