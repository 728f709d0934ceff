#!/usr/bin/env python3
"""How fast the operator reacts: CR apply -> training Job, spec edit -> new Job, Job success ->
new version answering on every replica (routing table: add, pinned smoke test, switch, verify,
prune). Measured on the tests' fake API server with two serving replicas: the production auth front
before one real fleet TorchServe (`persona serve` over the tiny base, `fleet_replica`), each
version published by the real `persona package` code from the tiny run (so every smoke test
includes a cold adapter load), for the operator as shipped (event-driven) and for a naive baseline
in the same run:

    .venv/bin/python benchmarks/operator.py                 # 5 trials each, baseline polls every 10 s
    .venv/bin/python benchmarks/operator.py --trials 3 --poll-interval 30

The baseline is the same reconcile code driven the way a first operator often is: a kopf timer
that polls every resource every N seconds (kopf timers have no default interval; 10 s is already
more eager than the 30-60 s such loops usually use). It reacts on its first tick (kopf runs a
timer as soon as it sees a resource), then only on later ticks; the script waits a random part of
the interval before each change so that changes do not land in step with the ticks. Targets (issue 7): apply -> Job
< 2 s; issue 12: Job success -> new version answering on every replica < 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import kopf
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fake API server and the fixtures live in tests/

from persona_operator import handlers  # noqa: E402
from persona_operator.cluster import GROUP, PLURAL, VERSION  # noqa: E402
from persona_serving.server import ServeOptions  # noqa: E402
from tests.fixtures.tiny_model import build_tiny_base, prepare_sample, train_tiny_run  # noqa: E402
from tests.fixtures.torchserve import free_port  # noqa: E402
from tests.operator.harness import (  # noqa: E402
    Cluster,
    Operator,
    fake_cluster,
    fleet_replica,
    fleet_server,
    operator_settings,
    persona_model,
    place_version,
)


def polling_registry(interval: float) -> kopf.OperatorRegistry:
    """The baseline: one timer per resource calls the same reconcile pass every `interval` seconds."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)  # the default registry has it built in
    kopf.on.startup(registry=registry)(handlers.configure)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)(handlers.remove_persona)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=interval, registry=registry)
    async def poll(name, memo, logger, **_):
        await memo.reconciler.reconcile(name, logger)

    return registry


async def until(check: Callable[[], object], timeout: float, interval: float = 0.005) -> float:
    """Seconds until `check()` is truthy."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"not reached within {timeout} s")
        await asyncio.sleep(interval)
    return time.perf_counter() - started


async def measure(cluster: Cluster, run: Path, trials: int, timeout: float, label: str,
                  pause: Callable[[], float]) -> dict[str, list[float]]:
    """Three latencies per trial, each on a fresh persona. Before each change the script waits
    `pause()` seconds, so changes do not land in step with a polling timer's ticks."""
    results: dict[str, list[float]] = {"apply -> Job created": [], "spec edit -> new Job": [],
                                       "Job success -> serving": []}
    for trial in range(trials):
        name = f"bench-{label}-{trial}"
        started = time.perf_counter()
        cluster.apply(persona_model(name))
        await until(lambda: cluster.jobs(name), timeout)
        results["apply -> Job created"].append(time.perf_counter() - started)

        await asyncio.sleep(pause())
        started = time.perf_counter()
        cluster.apply(persona_model(name, training={"loraRank": 4, "maxSteps": 20}))
        await until(lambda: any(j["metadata"]["name"] == f"{name}-v2" for j in cluster.jobs(name)), timeout)
        results["spec edit -> new Job"].append(time.perf_counter() - started)

        job = next(j for j in cluster.jobs(name) if j["metadata"]["name"] == f"{name}-v2")
        place_version(cluster.store, run, name, 2, loss=2.0)
        await asyncio.sleep(pause())
        started = time.perf_counter()
        cluster.finish_job(job, succeeded=True)
        await until(lambda: cluster.status(name).get("servingVersion") == "2", timeout)
        results["Job success -> serving"].append(time.perf_counter() - started)

        cluster.kube.delete("personamodels", cluster.namespace, name)  # unroutes it again
        await until(lambda: not any(p["metadata"]["name"] == name for p in cluster.kube.list("personamodels")), timeout)
        print(f"  {label} trial {trial + 1}/{trials}: " + ", ".join(f"{v[-1]:.2f} s" for v in results.values()),
              file=sys.stderr)
    return results


async def run_both(run: Path, work: Path, server: ServeOptions, args: argparse.Namespace) -> dict:
    """The shipped operator, then the polling baseline, against the same cluster and replicas."""
    results = {}
    port = free_port()
    async with fake_cluster(work, store=server.model_store) as cluster, \
            fleet_replica(server, work / "replica-0", port=port) as first, \
            fleet_replica(server, work / "replica-1", host="127.0.0.2", port=port, token_file=first.token_file):
        cluster.add_serving_pod("torchserve-0")
        cluster.add_serving_pod("torchserve-1", ip="127.0.0.2")
        for label, registry in (("operator", None), ("baseline", polling_registry(args.poll_interval))):
            settings = operator_settings(cluster, serving_inference_port=port, serving_token_file=first.token_file,
                                         rollout_timeout_seconds=120.0)
            operator = Operator(settings, registry=registry)
            await operator.start()
            before = step_totals()
            try:
                pause = functools.partial(random.Random(7).uniform, 0, args.poll_interval)
                results[label] = await measure(cluster, run, args.trials, 4 * args.poll_interval + 120, label, pause)
            finally:
                await operator.stop()
            after = step_totals()
            results[f"{label} steps"] = {step: (after[step][0] - before.get(step, (0.0, 0))[0]) /
                                       max(1, after[step][1] - before.get(step, (0.0, 0))[1]) for step in after}
    return results


def step_totals() -> dict[str, tuple[float, float]]:
    """(sum, count) of `persona_operator_rollout_step_seconds` per step, from this process's registry."""
    totals: dict[str, list[float]] = {}
    for family in REGISTRY.collect():
        if family.name != "persona_operator_rollout_step_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                entry = totals.setdefault(sample.labels["step"], [0.0, 0.0])
                entry[sample.name.endswith("_count")] += sample.value
    return {step: (total, count) for step, (total, count) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=10.0, help="the baseline's timer interval (s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        work = Path(tmp)
        print("training the tiny model ...", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table
            base = build_tiny_base(work / "base")
            run = train_tiny_run(base, prepare_sample(work / "data"), work / "run")
        print("starting the fleet TorchServe ...", file=sys.stderr)
        with fleet_server(work / "store", base, work / "serve") as server:
            results = asyncio.run(run_both(run, work, server, args))

    targets = {"apply -> Job created": 2.0, "spec edit -> new Job": 2.0, "Job success -> serving": 2.0}
    print(f"\nOperator latency, {args.trials} trials each (fake API server, 2 replicas: auth front + real fleet TorchServe, tiny adapter); "
          f"baseline: kopf timer polling every {args.poll_interval:g} s\n")
    print("| step | target | operator median | operator max | baseline median | baseline max | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for step, target in targets.items():
        ours, naive = results["operator"][step], results["baseline"][step]
        print(f"| {step} | < {target:g} s | {statistics.median(ours):.2f} s | {max(ours):.2f} s | "
              f"{statistics.median(naive):.2f} s | {max(naive):.2f} s | "
              f"{statistics.median(naive) / statistics.median(ours):.1f}x |")
    steps = results["operator steps"]
    print("\nRollout steps of the shipped operator, mean per rollout (persona_operator_rollout_step_seconds):\n")
    print("| " + " | ".join(steps) + " |")
    print("| " + " | ".join("---" for _ in steps) + " |")
    print("| " + " | ".join(f"{seconds * 1000:.0f} ms" for seconds in steps.values()) + " |")


if __name__ == "__main__":
    main()
