#!/usr/bin/env python3
"""How fast the operator reacts, and how its canaries behave (issue 23).

Part `latency`: CR apply -> training Job, spec edit -> new Job, Job success -> new version
answering on every replica (routing table: add, pinned smoke test, switch, verify, prune). Measured on the tests' fake API server with two serving replicas: the production auth front
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

Part `canary` (issue 23): canaries judged by simulated people talking through the real bot (fake Bot
API, a real Postgres) to the same two replicas, with a real Prometheus scraping the bot and the
fleet and the operator's analysis querying it. Per trial, a population that likes the new version
(👍 80 %, the old one 50 %) takes it through steps 20 % and 50 % to its promotion, and one that
prefers the old version (👍 30 % for the new one, 70 % for the old) has it rolled back. Measured:
from a passing analysis recorded in the status to the next step's weights answering on both
replicas (goal < 2 s); the share of each conversation's turns answered by its version within a
step (goal 100 %; replies asked while a step's weights were still being taken into force are left
out: a conversation may move once, old to new, when the canary grows) against the naive
per-request random split at the same weights (KServe's canaryTrafficPercent: each request drawn
alone), measured on the same fleet, and the conversations answered again by a version they had
left (goal 0); and the ratings the step had counted when the disliked canary was rolled back,
against the configured minimum.

    .venv/bin/python benchmarks/operator.py --part canary --canary-trials 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

import kopf
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fake API server and the fixtures live in tests/

from persona_operator import handlers  # noqa: E402
from persona_operator.cluster import GROUP, PLURAL, VERSION  # noqa: E402
from persona_operator.rollout import Replica, Rollout, check_key  # noqa: E402
from persona_serving.server import ServeOptions, endpoints  # noqa: E402
from personafleet.routing import PersonaRoute, read_routing, update_routing  # noqa: E402
from tests.bot.fake_telegram import BOT_TOKEN, FakeTelegram  # noqa: E402
from tests.fixtures.bot import Users, bot_running  # noqa: E402
from tests.fixtures.postgres import PostgresServer  # noqa: E402
from tests.fixtures.prometheus import PrometheusServer, find_prometheus_bin  # noqa: E402
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

RESULTS = ROOT / "benchmarks" / "results"
CANARY = {"steps": [20, 50], "minStepSeconds": 3,
          "analysis": {"intervalSeconds": 1, "timeoutSeconds": 120, "minRatings": 10, "minRequests": 10,
                       "minLikeRatio": 0.5, "maxErrorRate": 0.2}}
LIKED = {"1": 0.5, "2": 0.8}  # chance of 👍 by version: a population that likes the new version
DISLIKED = {"1": 0.7, "2": 0.3}  # and one that prefers the old one


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


# ---- part canary (issue 23) ---------------------------------------------------------------------
def stage(cluster: Cluster, persona: str) -> Callable[[], str]:
    """Where a persona's rollout stands: "Canary 1/2" during step 1 of 2, else its phase."""
    def now() -> str:
        status = cluster.status(persona)
        canary = status.get("canary") or {}
        return f"Canary {canary['step']}/{canary['steps']}" if status.get("phase") == "Canary" else status.get("phase", "")
    return now


async def advances(cluster: Cluster, persona: str, rollout: Rollout, replicas: list[Replica],
                   timeout: float) -> list[tuple[float, float]]:
    """(recorded, serving) times of each step: from the status recording it (the analysis passed) to its
    weights answering on every replica: a conversation the new weights send to the canary (and the old
    did not) answered as it; for the promotion, requests without a conversation."""
    changes: list[tuple[float, float]] = []
    step, route = 1, read_routing(cluster.store).personas[persona]
    async with httpx.AsyncClient(timeout=timeout) as http:
        while cluster.status(persona).get("phase") == "Canary":
            canary = cluster.status(persona)["canary"]
            if canary["step"] == step:
                await asyncio.sleep(0.005)
                continue
            recorded, step = time.perf_counter(), canary["step"]
            promoting = step > canary["steps"]
            after = PersonaRoute(serving=route.serving, versions=route.versions,
                                 weights=None if promoting else {v["version"]: v["weight"] for v in canary["weights"]})
            key = None if promoting else check_key(route, after, 2)
            for replica in replicas:
                while await rollout.ask(http, replica, persona, None, key) != 2:
                    await asyncio.sleep(0.005)
            changes.append((recorded, time.perf_counter()))
            route = after
    return changes


def sticky_share(versions_by_chat: dict[int, list[str]]) -> float:
    """Mean share of a conversation's turns answered by its most frequent version."""
    shares = [Counter(v).most_common(1)[0][1] / len(v) for v in versions_by_chat.values() if v]
    return statistics.mean(shares) if shares else float("nan")


def flip_backs(versions_by_chat: dict[int, list[str]]) -> int:
    """Conversations answered again by a version they had left (the hash moves a conversation at most
    once per canary, old to new; only a rollback sends it back)."""
    def went_back(versions: list[str]) -> bool:
        left: set[str] = set()
        for before, after in zip(versions, versions[1:]):
            if before != after:
                if after in left:
                    return True
                left.add(before)
        return False
    return sum(went_back(v) for v in versions_by_chat.values())


async def random_split_share(cluster: Cluster, persona: str, rollout: Rollout, replica: Replica, chats: int,
                             turns: int) -> float:
    """The naive baseline on the same fleet: the same 50/50 weights, each request drawn alone (a fresh
    conversation key per request, as a per-request random split does)."""
    update_routing(cluster.store, lambda table: table.weigh(persona, {1: 50, 2: 50}))
    await asyncio.sleep(1.5)  # the workers take the table into force
    async with httpx.AsyncClient(timeout=120) as http:
        async def conversation() -> list[str]:
            return [str(await rollout.ask(http, replica, persona, None, uuid.uuid4().hex)) for _ in range(turns)]
        answered = await asyncio.gather(*(conversation() for _ in range(chats)))
    update_routing(cluster.store, lambda table: table.add(persona, 2, serve=True))
    return sticky_share(dict(enumerate(answered)))


async def one_canary(cluster: Cluster, run: Path, persona: str, users: Users, rollout: Rollout,
                     replicas: list[Replica]) -> tuple[str, list[tuple[float, float]], dict]:
    """Version 1 serves, version 2 starts as a canary; `users` talk until it is promoted or rolled back.
    Returns the final phase, each step's (recorded, serving) times and the final status."""
    spec = {"rollout": {"keepVersions": 2, "retryLimit": 0, "strategy": "Canary", "canary": CANARY}}
    cluster.apply(persona_model(persona, **spec))
    for version in (1, 2):
        job = await wait_for(lambda: [j for j in cluster.jobs(persona) if j["metadata"]["name"] == f"{persona}-v{version}"])
        place_version(cluster.store, run, persona, version, loss=2.0 - version / 10)
        cluster.finish_job(job[0], succeeded=True)
        if version == 1:
            await wait_for(lambda: cluster.status(persona).get("servingVersion") == "1")
            cluster.apply(persona_model(persona, training={"loraRank": 4, "maxSteps": 20}, **spec))
    await wait_for(lambda: cluster.status(persona).get("phase") == "Canary")
    watching = asyncio.create_task(advances(cluster, persona, rollout, replicas, 120))
    await users.keep_talking(until=lambda: cluster.status(persona).get("phase") != "Canary", rounds=200)
    status = await wait_for(lambda: cluster.status(persona).get("phase") in ("Ready", "Failed") and cluster.status(persona))
    return status["phase"], await watching, status


async def wait_for(check: Callable[[], object], timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout} s")
        await asyncio.sleep(0.05)
    return result


def population(chances: dict[str, float], seed: int) -> Callable[[str], bool]:
    rng = random.Random(seed)
    return lambda version: rng.random() < chances[version]


async def run_canaries(run: Path, work: Path, server: ServeOptions, args: argparse.Namespace) -> dict:
    """The canary part: per trial a liked canary (promoted) and a disliked one (rolled back)."""
    results: dict = {"advance_s": [], "sticky_share": [], "flip_backs": 0, "conversations": 0, "random_split_share": [],
                     "rollback_ratings": [], "min_ratings": CANARY["analysis"]["minRatings"], "outcomes": []}
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-pg-")))
    postgres.root.chmod(0o755)
    postgres.init()
    postgres.start()
    prometheus = PrometheusServer(find_prometheus_bin(), work / "prometheus")
    prometheus.root.mkdir()
    prometheus.start()
    telegram = FakeTelegram()
    await telegram.start()
    port = free_port()
    try:
        async with fake_cluster(work, store=server.model_store) as cluster, \
                fleet_replica(server, work / "replica-0", port=port) as first, \
                fleet_replica(server, work / "replica-1", host="127.0.0.2", port=port, token_file=first.token_file):
            cluster.add_serving_pod("torchserve-0")
            cluster.add_serving_pod("torchserve-1", ip="127.0.0.2")
            settings = operator_settings(cluster, serving_inference_port=port, serving_token_file=first.token_file,
                                         rollout_timeout_seconds=120.0, prometheus_url=prometheus.url)
            rollout, operator = Rollout(settings), Operator(settings)
            replicas = [Replica("torchserve-0", f"http://127.0.0.1:{port}"), Replica("torchserve-1", f"http://127.0.0.2:{port}")]
            await operator.start()
            try:
                for trial in range(args.canary_trials):
                    for kind, chances in (("liked", LIKED), ("disliked", DISLIKED)):
                        persona = f"bench-{kind}-{trial}"
                        env = {"BOT_TOKEN": BOT_TOKEN, "DATABASE_URL": await postgres.create_database(),
                               "TELEGRAM_API_URL": telegram.url, "INFERENCE_URL": first.inference_url,
                               "INFERENCE_TOKEN_FILE": str(work / "replica-0" / "inference-token"),
                               "INFERENCE_TIMEOUT": "120", "PERSONA": persona, "PERSONAS": persona, "METRICS_PORT": "0",
                               "RATE_LIMIT_MESSAGES": "100000", "MAX_REPLY_TOKENS": "8", "VOICE": "false"}
                        async with bot_running(env) as bot:
                            serving = endpoints(server)["metrics"].removeprefix("http://").removesuffix("/metrics")
                            prometheus.scrape({"bot": [f"127.0.0.1:{bot.metrics_port}"], "serving": [serving]})
                            users = Users(telegram, env["DATABASE_URL"], likes=population(chances, trial),
                                          stage=stage(cluster, persona), chats=args.chats)
                            telegram.sent.clear()
                            phase, changes, status = await one_canary(cluster, run, persona, users, rollout, replicas)
                        latencies = [serving - recorded for recorded, serving in changes]
                        results["outcomes"].append(f"{kind}: {phase}")

                        def in_transition(reply) -> bool:  # asked before a step's weights served on every replica
                            return any(reply.asked < serving and reply.answered > recorded for recorded, serving in changes)

                        for step in range(1, len(CANARY["steps"]) + 1):
                            results["sticky_share"].append(sticky_share(users.versions(
                                f"Canary {step}/{len(CANARY['steps'])}", unless=in_transition)))
                        during = {chat: versions for chat, versions in users.versions(
                            unless=lambda reply: not reply.stage.startswith("Canary")).items() if versions}
                        results["flip_backs"] += flip_backs(during)
                        results["conversations"] += len(during)
                        if kind == "liked":
                            results["advance_s"] += latencies
                            results["random_split_share"].append(await random_split_share(
                                cluster, persona, rollout, replicas[0], args.chats, args.turns))
                        else:
                            results["rollback_ratings"].append((status["canary"].get("analysis") or {}).get("ratings"))
                        print(f"  canary trial {trial + 1}/{args.canary_trials} {kind}: {phase}, advances "
                              f"{[round(x, 2) for x in latencies]} s", file=sys.stderr)
            finally:
                await operator.stop()
    finally:
        await telegram.stop()
        prometheus.stop()
        postgres.stop()
    return results


def print_canary(results: dict) -> None:
    advance, sticky = results["advance_s"], [x for x in results["sticky_share"] if x == x]
    ratings = [r for r in results["rollback_ratings"] if r is not None]
    print("\nCanary rollouts judged by simulated users through the real bot, fleet TorchServe and Prometheus "
          f"(tiny model; outcomes: {', '.join(results['outcomes'])})\n")
    print("| measure | goal | measured | naive baseline |")
    print("| --- | --- | --- | --- |")
    if advance:
        print(f"| passing analysis -> next step's weights on both replicas | < 2 s | median {statistics.median(advance):.2f} s, "
              f"max {max(advance):.2f} s ({len(advance)} steps) | - |")
    if sticky:
        print(f"| share of a conversation's turns answered by its version (within a step) | 100 % | "
              f"{100 * statistics.mean(sticky):.1f} % | {100 * statistics.mean(results['random_split_share']):.1f} % "
              "(per-request random split) |")
        print(f"| conversations answered again by a version they had left, during a canary | 0 | "
              f"{results['flip_backs']} of {results['conversations']} | - |")
    if ratings:
        print(f"| ratings counted when the disliked canary was rolled back | configured minimum "
              f"{results['min_ratings']} | {', '.join(f'{r:g}' for r in ratings)} | - |")


def plot_canary(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].bar(range(len(results["advance_s"])), results["advance_s"])
    axes[0].axhline(2.0, color="red", linestyle="--", label="goal 2 s")
    axes[0].set(title="passing analysis -> weights serving", ylabel="seconds", xlabel="step")
    axes[0].legend()
    sticky = [x for x in results["sticky_share"] if x == x]
    axes[1].bar(["sticky hash", "per-request random"],
                [100 * statistics.mean(sticky or [0]), 100 * statistics.mean(results["random_split_share"] or [0])])
    axes[1].set(title="turns answered by the conversation's version", ylabel="%")
    ratings = [r for r in results["rollback_ratings"] if r is not None]
    axes[2].bar(range(len(ratings)), ratings)
    axes[2].axhline(results["min_ratings"], color="red", linestyle="--", label="configured minimum")
    axes[2].set(title="ratings at rollback (old version preferred)", xlabel="trial")
    axes[2].legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["latency", "canary", "all"], default="all")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=10.0, help="the baseline's timer interval (s)")
    parser.add_argument("--canary-trials", type=int, default=3, help="liked + disliked canaries per trial")
    parser.add_argument("--chats", type=int, default=16, help="simulated conversations per canary")
    parser.add_argument("--turns", type=int, default=6, help="turns per conversation of the random-split baseline")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where operator.json and operator.png go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        work = Path(tmp)
        print("training the tiny model ...", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table
            base = build_tiny_base(work / "base")
            run = train_tiny_run(base, prepare_sample(work / "data"), work / "run")
        print("starting the fleet TorchServe ...", file=sys.stderr)
        (work / "latency").mkdir()
        (work / "canary").mkdir()
        with fleet_server(work / "store", base, work / "serve") as server:
            results = asyncio.run(run_both(run, work / "latency", server, args)) if args.part != "canary" else {}
            canary = asyncio.run(run_canaries(run, work / "canary", server, args)) if args.part != "latency" else {}

    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "operator.json").write_text(json.dumps({"latency": results, "canary": canary}, indent=2, default=str))
    if results:
        print_latency(results, args)
    if canary:
        print_canary(canary)
        plot_canary(canary, args.results / "operator.png")
    print(f"\nwrote {args.results / 'operator.json'}" + (f" and {args.results / 'operator.png'}" if canary else ""))


def print_latency(results: dict, args: argparse.Namespace) -> None:
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
