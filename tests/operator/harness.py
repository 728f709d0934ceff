"""The operator test harness: the fake cluster seen from the test, the operator in a thread, helpers.

The tests play the parts no process here can: the Job controller (`finish_job` sets a Job's
status after the test placed what `persona train`/`package` would have written into the model
store) and the kubelet (`add_serving_pod` creates a Ready pod whose IP is TorchServe's).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from aiohttp import web

from persona_operator.settings import Settings
from tests.fixtures.torchserve import build_mar, free_port
from tests.operator.fake_kube import ApiError, FakeKube

CRD_PATH = Path(__file__).resolve().parents[2] / "charts" / "personafleet" / "crds" / "personamodel.yaml"
SERVING_LABELS = {"app.kubernetes.io/component": "serving"}


def crd_schemas() -> dict[str, dict]:
    """The chart's CRD schema, so the fake API refuses what a real one would (when the chart has it)."""
    if not CRD_PATH.exists():
        return {}
    crd = yaml.safe_load(CRD_PATH.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return {"personamodels": version["schema"]["openAPIV3Schema"]}


async def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy (and return it), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check.__doc__ or check}")
        await asyncio.sleep(interval)


@dataclass
class Cluster:
    """The fake API server and the test's hands on it."""

    kube: FakeKube
    url: str
    namespace: str = "default"
    store: Path = field(default_factory=Path)

    def persona(self, name: str) -> dict:
        return self.kube.get("personamodels", self.namespace, name)

    def status(self, name: str) -> dict:
        return self.persona(name).get("status") or {}

    def jobs(self, persona: str) -> list[dict]:
        return self.kube.list("jobs", self.namespace, f"personafleet.io/persona={persona}")

    def events(self, reason: str | None = None) -> list[dict]:
        return [e for e in self.kube.list("events", self.namespace) if reason is None or e.get("reason") == reason]

    def apply(self, body: dict) -> dict:
        """`kubectl apply`: create, or replace the spec of an existing resource."""
        name = body["metadata"]["name"]
        try:
            self.persona(name)
        except ApiError:
            return self.kube.create("personamodels", body, self.namespace)
        return self.kube.patch("personamodels", self.namespace, name, {"spec": body["spec"]})

    def finish_job(self, job: dict, *, succeeded: bool, message: str = "") -> None:
        """The Job controller's part: mark a Job complete or failed."""
        kind, reason = ("Complete", "Completed") if succeeded else ("Failed", "BackoffLimitExceeded")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message,
                                  "lastTransitionTime": stamp}],
                  "startTime": job["metadata"]["creationTimestamp"]}
        status.update({"succeeded": 1, "completionTime": stamp} if succeeded else {"failed": 1})
        self.kube.patch("jobs", self.namespace, job["metadata"]["name"], {"status": status}, subresource="status")

    def add_serving_pod(self, name: str, ip: str = "127.0.0.1") -> None:
        """The kubelet's part: a Running, Ready TorchServe pod."""
        self.kube.create("pods", {"metadata": {"name": name, "labels": SERVING_LABELS},
                                  "spec": {"containers": [{"name": "torchserve", "image": "personafleet-serve"}]}},
                         self.namespace)
        self.kube.patch("pods", self.namespace, name, {"status": {
            "phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status")


def persona_model(name: str = "alice", **spec: Any) -> dict:
    """A minimal valid PersonaModel (contract 5); keyword arguments override spec sections."""
    body = {
        "apiVersion": "personafleet.io/v1alpha1",
        "kind": "PersonaModel",
        "metadata": {"name": name},
        "spec": {
            "persona": {"description": "Отвечаю коротко.", "authorId": "user1"},
            "baseModel": "/store/base/tiny-t5",
            "dataset": {"exports": ["exports/result.json"], "contextTurns": 3},
            "training": {"loraRank": 8, "maxSteps": 20},
            "rollout": {"keepVersions": 2, "maxEvalLossIncrease": 0.05, "retryLimit": 1},
        },
    }
    body["spec"].update(spec)
    return body


@dataclass
class Operator:
    """`persona operator` in a thread of its own, as in its own process: kopf cancels the tasks of its
    event loop when it stops. `restart()` loses all in-memory state, like a pod restart."""

    settings: Settings
    registry: Any = None  # a kopf.OperatorRegistry other than the default (the benchmark's baseline)
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    async def start(self) -> None:
        from persona_operator.runner import operate

        self.stop_flag, ready = threading.Event(), threading.Event()

        def main() -> None:
            try:
                asyncio.run(operate(self.settings, serve_metrics=False, stop_flag=self.stop_flag, ready_flag=ready,
                                    registry=self.registry))
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc
            finally:
                ready.set()

        self.thread = threading.Thread(target=main, name="operator", daemon=True)
        self.thread.start()
        await asyncio.to_thread(ready.wait, 30)
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        if self.thread is not None:
            self.stop_flag.set()
            await asyncio.to_thread(self.thread.join, 15)
            assert not self.thread.is_alive(), "the operator did not stop within 15 s"
            self.thread = None
            if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
                raise self.error

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def operator_settings(cluster: Cluster, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        namespace=cluster.namespace,
        store_path=cluster.store,
        serving_selector="app.kubernetes.io/component=serving",
        health_port=free_port(),
        listen_address="127.0.0.1",
        resync_seconds=30.0,
        retry_backoff_seconds=0.2,
        rollout_timeout_seconds=60.0,
    )
    values.update(overrides)
    return Settings(**values)




@asynccontextmanager
async def fake_cluster(workdir: Path) -> AsyncIterator[Cluster]:
    """Serve a fresh FakeKube on 127.0.0.1 and point the kubernetes client (and so kopf) at it."""
    kube = FakeKube(crd_schemas())
    runner = web.AppRunner(kube.app(), handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes no public accessor
    url = f"http://127.0.0.1:{port}"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": "default"}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
    }))
    # The client reads $KUBECONFIG once, at import: point its default at this file instead.
    previous = kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    store = workdir / "store"
    store.mkdir(exist_ok=True)
    try:
        yield Cluster(kube=kube, url=url, store=store)
    finally:
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = previous
        await kube.close_watches()
        await runner.cleanup()


@dataclass(frozen=True)
class Replica:
    """A serving pod as the operator sees it: the auth front's ports on 127.0.0.1, and the token
    file of the operator's Secret (docs/serving.md: the front accepts it on both ports)."""

    inference_port: int
    management_port: int
    token_file: Path  # the management token: the operator's
    inference_token_file: Path  # the bot's
    model_store: Path


@asynccontextmanager
async def serving_replica(torchserve: Any, workdir: Path) -> AsyncIterator[Replica]:
    """Put the production auth front (persona_serving.front) before a running TorchServe: it checks
    the Secret's token, forwards with TorchServe's own key, and stages nested model-store urls
    into TorchServe's directory of links."""
    from persona_serving.front import AuthFront

    workdir.mkdir(parents=True, exist_ok=True)
    tokens = {kind: workdir / f"{kind}-token" for kind in ("inference", "management")}
    for kind, path in tokens.items():
        path.write_text(f"{kind}-{time.time_ns()}\n")
    front = AuthFront(
        inference_token_file=tokens["inference"], management_token_file=tokens["management"],
        key_file=torchserve.key_file, inference_backend=torchserve.inference_url,
        management_backend=torchserve.management_url, model_store=torchserve.model_store,
        links=torchserve.options.links,
    )
    replica = Replica(free_port(), free_port(), tokens["management"], tokens["inference"], torchserve.model_store)
    stopping = asyncio.Event()
    task = asyncio.create_task(front.serve("127.0.0.1", replica.inference_port, replica.management_port, stopping))
    await eventually(lambda: _listening(replica.management_port), timeout=10)
    try:
        yield replica
    finally:
        stopping.set()
        await task


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def place_version(store: Path, run: Path, persona: str, version: int, loss: float) -> Path:
    """What a successful training Job leaves in the model store (contract 1): run/report.json and
    the .mar. Returns the .mar's path."""
    out = store / persona / f"v{version}"
    (out / "run").mkdir(parents=True, exist_ok=True)
    report = json.loads((run / "report.json").read_text())
    report.setdefault("eval", {})["after"] = {"loss": loss, "perplexity": round(2.718281828 ** loss, 4)}
    (out / "run" / "report.json").write_text(json.dumps(report))
    return build_mar(run, persona, str(version), store)
