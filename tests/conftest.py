"""Shared pytest set-up. Part-specific fixtures live in tests/<part>/conftest.py; fixtures that
several parts use (the tiny model, a real TorchServe, a real Postgres) live in tests/fixtures/."""

import os

# Two cores on the reference machine: keep torch from oversubscribing them in every process.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins: list[str] = [
    "tests.fixtures.postgres", "tests.fixtures.tiny_model", "tests.fixtures.fred_model", "tests.fixtures.causal_model",
    "tests.fixtures.torchserve", "tests.fixtures.asr", "tests.fixtures.prometheus",
]
