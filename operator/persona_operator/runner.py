"""Starting the operator: kopf in this process, with /metrics and /healthz beside it."""

from __future__ import annotations

import asyncio
import threading

import kopf

from persona_operator import metrics
from persona_operator.cluster import Cluster, load_config
from persona_operator.reconcile import Reconciler
from persona_operator.rollout import Rollout
from persona_operator.settings import Settings


def make_memo(settings: Settings) -> kopf.Memo:
    """What every handler shares: the settings, the reconciler, and the daemons' wake-up events."""
    load_config()
    reconciler = Reconciler(settings=settings, cluster=Cluster(settings.namespace), rollout=Rollout(settings))
    return kopf.Memo(settings=settings, reconciler=reconciler, wakeups={}, passes={})


async def operate(
    settings: Settings,
    *,
    standalone: bool = True,
    serve_metrics: bool = True,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    registry: kopf.OperatorRegistry | None = None,
) -> None:
    """Run until `stop_flag` is set (or the process is signalled). `registry`: other reactions than
    `handlers.py` (the benchmark's polling baseline)."""
    import persona_operator.handlers  # noqa: F401 - registers the reactions with kopf

    memo = make_memo(settings)  # fails first, with one line, when there is no cluster to talk to
    if serve_metrics:
        metrics.serve(settings.metrics_port, settings.listen_address)
    await kopf.operator(
        standalone=standalone,
        namespaces=[settings.namespace],
        memo=memo,
        liveness_endpoint=f"http://{settings.listen_address}:{settings.health_port}/healthz",
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        registry=registry,
    )


def run(settings: Settings, *, standalone: bool = True, verbose: bool = False) -> None:
    """`persona operator`: blocks until interrupted (SIGINT/SIGTERM stop kopf gracefully)."""
    kopf.configure(verbose=verbose)
    asyncio.run(operate(settings, standalone=standalone))
