"""`persona bot` as a user runs it: configuration errors are one line, SIGTERM is graceful."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from persona_bot.service import BotService
from persona_bot.settings import load_settings
from personafleet.errors import PersonaError

GOOD = {
    "BOT_TOKEN": "123:abc",
    "DATABASE_URL": "postgresql://bot@db:5432/bot",
    "INFERENCE_URL": "http://serving:8080",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"BOT_TOKEN": None}, "BOT_TOKEN is not set"),
        ({"BOT_TOKEN": "not-a-token"}, "BOT_TOKEN: must look like"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL: must be a postgresql://"),
        ({"INFERENCE_URL": "serving:8080"}, "INFERENCE_URL: must be an http(s)://"),
        ({"INFERENCE_TOKEN": "t", "INFERENCE_TOKEN_FILE": "/etc/hostname"}, "set one, not both"),
        ({"INFERENCE_TOKEN_FILE": "/nonexistent/token"}, "is not a readable file"),
        ({"PERSONA": "Bad Name"}, "PERSONA: String should match"),
        ({"PERSONAS": "a,b"}, "PERSONA: 'devops-dude' is not one of PERSONAS"),
        ({"BOT_MODE": "push"}, "BOT_MODE: Input should be 'polling' or 'webhook'"),
        ({"BOT_MODE": "webhook"}, "needs WEBHOOK_URL and WEBHOOK_SECRET"),
        ({"BOT_MODE": "webhook", "WEBHOOK_URL": "https://x/h", "WEBHOOK_SECRET": "no spaces"}, "WEBHOOK_SECRET: must be"),
        ({"METRICS_PORT": "http"}, "METRICS_PORT: Input should be a valid integer"),
    ],
)
def test_bad_configuration_is_one_clear_line(change, message):
    environ = {key: value for key, value in {**GOOD, **change}.items() if value is not None}
    with pytest.raises(PersonaError) as caught:
        load_settings(environ)
    assert message in str(caught.value) and "\n" not in str(caught.value)


async def test_cli_reports_bad_configuration_without_a_traceback():
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "persona_cli", "bot",
        env={"PATH": os.environ["PATH"], **GOOD, "BOT_TOKEN": "oops"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert stderr.decode().strip().splitlines() == [
        "persona: error: bad bot configuration: BOT_TOKEN: must look like 123456789:AA... (the token @BotFather gives)"
    ]


async def test_unreachable_bot_api_is_a_clear_error(bot_env):
    service = BotService(load_settings({**bot_env, "TELEGRAM_API_URL": "http://127.0.0.1:9"}))
    with pytest.raises(PersonaError, match="^Telegram Bot API: "):
        await service.run()


async def test_sigterm_finishes_the_reply_in_flight_then_exits(bot_env, telegram, model):
    model.delay = 1.0
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "persona_cli", "bot",
        env={**os.environ, **bot_env, "INFERENCE_TIMEOUT": "5"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await telegram.wait_calls("setMyCommands", timeout=30)
        telegram.message("one last thing", chat_id=51)
        await model.wait_for_request(timeout=5)
        assert model.requests and not telegram.sent
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode()[-2000:]
    assert [m["text"] for m in telegram.sent] == ["[devops-dude] re: one last thing"]
    assert "Finishing 1 update(s) in flight" in output.decode()
