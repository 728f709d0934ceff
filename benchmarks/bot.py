"""How much time does the bot itself add to a reply, at increasing message rates?

The bot (real Dispatcher, real Postgres) runs in this process; the fake Bot API, a stub model
and the load generator run in a child process, so they do not compete with the bot for this
process's event loop. For every message:

    overhead = (reply arrives at the fake API) - (fake API handed out the update) - (model busy)

i.e. everything except the model: polling, parsing, the chat's settings and history from
Postgres, the typing action, the HTTP call around the model, sending, storing the exchange.

Compared in the same run: the store as shipped (asyncpg pool) against a naive baseline that
opens a new database connection for every operation.

    .venv/bin/python benchmarks/bot.py [--rates 50 100 200 400] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fakes live with the tests

import asyncpg  # noqa: E402

from persona_bot.service import BotService  # noqa: E402
from persona_bot.settings import load_settings  # noqa: E402
from persona_bot.store import Store, _init_connection  # noqa: E402
from tests.bot.fake_telegram import BOT_TOKEN, FakeTelegram  # noqa: E402
from tests.bot.stub_model import STUB_TOKEN, StubModel  # noqa: E402
from tests.fixtures.postgres import PostgresServer  # noqa: E402

TARGET_RATE, TARGET_P99_MS = 200, 10.0
WARM_UP_RATE = 50
CHATS = 200  # messages rotate over this many private chats, so histories grow as in real use


class ConnectionPerOperation(Store):
    """The naive baseline: a fresh connection for every database operation, no pool."""

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        connection = await asyncpg.connect(self.dsn, timeout=self.timeout, command_timeout=self.timeout)
        try:
            await _init_connection(connection)
            yield connection
        finally:
            await connection.close()


# --- the child process: fake Telegram, stub model, load -------------------------------------
def fakes_process(pipe, model_delay: float) -> None:
    asyncio.run(_fakes(pipe, model_delay))


async def _fakes(pipe, model_delay: float) -> None:
    loop = asyncio.get_running_loop()
    telegram, model = FakeTelegram(long_poll=0.5), StubModel(delay=model_delay)
    pipe.send((await telegram.start(), await model.start()))
    while (command := await loop.run_in_executor(None, pipe.recv)) != "stop":
        rate, seconds = command
        pipe.send(await _load(telegram, model, rate, seconds))
    await telegram.stop()
    await model.stop()


async def _load(telegram: FakeTelegram, model: StubModel, rate: float, seconds: float) -> dict:
    """Send `rate` messages per second for `seconds`; per message (delivered, replied, model busy)."""
    loop = asyncio.get_running_loop()
    telegram.sent.clear(), telegram.sent_at.clear(), telegram.delivered_at.clear()
    model.requests.clear(), model.busy_seconds.clear()
    count = int(rate * seconds)
    start = loop.time()
    updates = []
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        updates.append(telegram.message(f"m{i}", chat_id=1 + i % CHATS)["update_id"])
    try:
        await telegram.wait_sent(count, timeout=seconds + 30)
    except AssertionError:
        pass  # report what arrived
    busy = {request.message: spent for (_, request), spent in zip(model.requests, model.busy_seconds)}
    replied = {m["text"].removeprefix("[devops-dude] re: "): at for m, at in zip(telegram.sent, telegram.sent_at)}
    rows = []
    for i, update_id in enumerate(updates):
        text = f"m{i}"
        if text in replied and text in busy:
            rows.append((telegram.delivered_at[update_id], replied[text], busy[text]))
    return {"sent": count, "rows": rows}


# --- this process: the bot -----------------------------------------------------------------
async def measure(
    variant: str, dsn: str, pipe, urls: tuple[str, str], rates: list[float], seconds: float
) -> list[dict]:
    telegram_url, model_url = urls
    settings = load_settings({
        "BOT_TOKEN": BOT_TOKEN, "DATABASE_URL": dsn, "INFERENCE_URL": model_url, "INFERENCE_TOKEN": STUB_TOKEN,
        "TELEGRAM_API_URL": telegram_url, "METRICS_PORT": "0", "RATE_LIMIT_MESSAGES": "1000000",
    })
    store_class = Store if variant == "pool" else ConnectionPerOperation
    service = BotService(settings, store=store_class(dsn, timeout=settings.database_timeout))
    task = asyncio.create_task(service.run())
    while not service.ready:
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    results = []
    try:
        pipe.send((WARM_UP_RATE, 1.0))  # first messages pay for lazy imports and connections
        await loop.run_in_executor(None, pipe.recv)
        for rate in rates:
            cpu = time.process_time()
            pipe.send((rate, seconds))
            load = await loop.run_in_executor(None, pipe.recv)
            cpu = time.process_time() - cpu
            rows = load["rows"]
            overhead_ms = sorted((replied - delivered - busy) * 1000 for delivered, replied, busy in rows)
            span = max(r[1] for r in rows) - min(r[0] for r in rows) if rows else float("nan")
            results.append({
                "variant": variant,
                "rate": rate,
                "sent": load["sent"],
                "answered": len(rows),
                "throughput": len(rows) / span if rows else 0.0,
                "p50": statistics.median(overhead_ms) if rows else float("nan"),
                "p99": overhead_ms[min(len(rows) - 1, int(len(rows) * 0.99))] if rows else float("nan"),
                "max": overhead_ms[-1] if rows else float("nan"),
                "cpu": cpu * 1000 / max(1, len(rows)),
            })
            print(_row(results[-1]), flush=True)
    finally:
        service.stop()
        await task
    return results


HEADER = (f"{'store':<26} {'rate/s':>7} {'sent':>6} {'answered':>8} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'max ms':>8} {'bot CPU ms/msg':>15}")
LABELS = {"pool": "asyncpg pool (shipped)", "naive": "connection per operation"}


def _row(r: dict) -> str:
    return (f"{LABELS[r['variant']]:<26} {r['rate']:>7.0f} {r['sent']:>6} {r['answered']:>8} {r['throughput']:>8.1f}"
            f" {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f} {r['cpu']:>15.2f}")


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)  # overload makes the store flap; the table says enough
    root = Path(tempfile.mkdtemp(prefix="persona-bench-pg-"))
    root.chmod(0o755)
    server = PostgresServer(root)
    server.init()
    server.start()
    parent, child = mp.Pipe()
    fakes = mp.get_context("spawn").Process(target=fakes_process, args=(child, args.model_delay), daemon=True)
    fakes.start()
    results: list[dict] = []
    try:
        urls = parent.recv()
        print(f"bot overhead excluding the model (stub model delay {args.model_delay * 1000:.0f} ms),"
              f" {args.seconds:.0f} s per rate; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        print(HEADER, flush=True)
        for variant in ("pool", "naive"):
            dsn = await server.create_database()
            results += await measure(variant, dsn, parent, urls, args.rates, args.seconds)
    finally:
        parent.send("stop")
        fakes.join(10)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print("\n" + HEADER)
    for r in results:
        print(_row(r))
    target = [r for r in results if r["variant"] == "pool" and r["rate"] == TARGET_RATE]
    if target:
        verdict = "met" if target[0]["p99"] < TARGET_P99_MS else "NOT met"
        print(f"\ntarget p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE} msg/s: {verdict} ({target[0]['p99']:.2f} ms)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per rate")
    parser.add_argument("--model-delay", type=float, default=0.0, help="seconds the stub model takes per reply")
    sys.exit(asyncio.run(main(parser.parse_args())))
