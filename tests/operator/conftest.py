"""Fixtures of the operator's tests: a fake API server per test, the operator running against it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.operator.harness import Cluster, Operator, fake_cluster, operator_settings


@pytest.fixture
async def cluster(tmp_path) -> AsyncIterator[Cluster]:
    """A fresh fake API server on 127.0.0.1, the real clients pointed at it, an empty model store."""
    async with fake_cluster(tmp_path) as running:
        yield running


@pytest.fixture
async def operator(cluster) -> AsyncIterator[Operator]:
    """The operator against the fake API, with a model store in a temp dir and no TorchServe."""
    running = Operator(operator_settings(cluster))
    await running.start()
    yield running
    await running.stop()
