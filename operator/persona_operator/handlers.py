"""The operator's reactions. Each is a few lines; the work is in `reconcile`, `jobs` and `rollout`.

Every PersonaModel gets one daemon that runs reconcile passes one at a time, so two events can
never race each other into two Jobs or two rollouts. Everything else only wakes that daemon up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from persona_operator import metrics
from persona_operator.cluster import GROUP, PLURAL, VERSION
from persona_operator.jobs import LABEL_MANAGED_BY, LABEL_PERSONA, MANAGED_BY
from persona_operator.status import now

FINALIZER = "personafleet.io/cleanup"
ERROR_BACKOFF_SECONDS = 5.0
DELETE_RETRIES, DELETE_BACKOFF_SECONDS = 5, 10.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's bookkeeping under our own annotation prefix; Events only for what a person should read
    (ours, and kopf's warnings); no CRD scanning (we know our resources; RBAC need not read CRDs)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="personafleet.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="personafleet.io")
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def reconcile_persona(name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    """One reconcile pass after another: on a wake-up, when a step asks for it, or every resync period."""
    wakeup = memo.wakeups.setdefault(name, asyncio.Event())
    while not stopped:
        wakeup.clear()
        try:
            async with _pass_lock(memo, name):
                delay = await memo.reconciler.reconcile(name, logger)
        except Exception:  # noqa: BLE001 - the pass is retried; the error is counted and logged
            metrics.RECONCILE_ERRORS.labels(name).inc()
            logger.exception("Reconcile of %s failed; retrying in %.0f s", name, ERROR_BACKOFF_SECONDS)
            delay = ERROR_BACKOFF_SECONDS
        await _sleep(wakeup, stopped, delay if delay is not None else memo.settings.resync_seconds)


# The wake-ups are coroutines: kopf runs plain functions in a thread, and an asyncio.Event must be
# set from the event loop's own thread.
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def spec_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    """A new generation: the daemon starts its training (and stops the superseded Job)."""
    _wake(memo, name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_PERSONA: kopf.PRESENT})
async def job_changed(labels: dict[str, str], memo: kopf.Memo, **_: Any) -> None:
    """A training Job changed: its persona's daemon looks whether it finished."""
    _wake(memo, labels[LABEL_PERSONA])


@kopf.on.delete(GROUP, VERSION, PLURAL, retries=DELETE_RETRIES, backoff=DELETE_BACKOFF_SECONDS)
async def remove_persona(name: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Remove the persona from the routing table (replicas stop answering it within a second); its
    files stay on the store, its Jobs go with their owner.

    Retried a few times, then given up (kopf releases the finalizer): an unwritable store must not
    keep the resource, and its namespace, from being deleted forever."""
    # After a pass still rolling out (kopf stops the daemon only alongside this handler), so
    # nothing it routes is left behind.
    async with _pass_lock(memo, name):
        await memo.reconciler.rollout.route(lambda table: table.remove(name))
    memo.wakeups.pop(name, None)
    memo.passes.pop(name, None)
    memo.reconciler.retry_due.pop(name, None)
    memo.reconciler.drift.pop(name, None)
    metrics.forget(name)
    logger.info("Removed %s from the routing table", name)


@kopf.on.probe(id="now")
def liveness_time(**_: Any) -> str:
    """kopf's /healthz answers only while its event loop runs; this puts a timestamp in the answer."""
    return now()


def _pass_lock(memo: kopf.Memo, name: str) -> asyncio.Lock:
    """One reconcile pass or cleanup of a persona at a time."""
    return memo.passes.setdefault(name, asyncio.Lock())


def _wake(memo: kopf.Memo, name: str) -> None:
    wakeup = memo.wakeups.get(name)
    if wakeup is not None:
        wakeup.set()


async def _sleep(wakeup: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    """Wait for a wake-up, the daemon's stop, or `delay` seconds, whichever comes first."""
    waits = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
