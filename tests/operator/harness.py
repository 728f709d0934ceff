"""The operator test harness: the fake cluster seen from the test, the operator in a thread, helpers.

The tests play the parts no process here can: the Job controller (`finish_job` sets a Job's
status after the test placed what `persona train`/`package` would have written into the model
store, with the real `persona package` code) and the kubelet (`add_serving_pod` creates a Ready pod
whose IP is a serving replica's, `fleet_replica`: the production auth front before a real fleet
TorchServe, `fleet_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import yaml
from aiohttp import web

from persona_operator.settings import Settings
from persona_serving.server import ServeOptions
from personafleet.errors import PersonaError
from personafleet.routing import RoutingTable, read_routing, version_dir
from tests.fixtures.torchserve import free_port, serve_options
from tests.operator.fake_kube import ApiError, FakeKube

CRD_PATH = Path(__file__).resolve().parents[2] / "charts" / "personafleet" / "crds" / "personamodel.yaml"
SERVING_LABELS = {"app.kubernetes.io/component": "serving"}
OPERATOR_RESIDENT_ADAPTERS = 4  # a test's versions stay loaded: a cold load per new version, as in a cluster


def install_crd(kube: FakeKube) -> None:
    """The chart's CRD, created as Helm creates it: the fake API refuses it where a real one would,
    then refuses the PersonaModels a real one would."""
    kube.create("customresourcedefinitions", yaml.safe_load(CRD_PATH.read_text()))


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

    def add_serving_pod(self, name: str, ip: str = "127.0.0.1", labels: dict[str, str] | None = None) -> None:
        """The kubelet's part: a Running, Ready TorchServe pod (`labels`: e.g. its fleet's base)."""
        self.kube.create("pods", {"metadata": {"name": name, "labels": SERVING_LABELS | (labels or {})},
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
async def fake_cluster(workdir: Path, store: Path | None = None) -> AsyncIterator[Cluster]:
    """Serve a fresh FakeKube on 127.0.0.1 and point the kubernetes client (and so kopf) at it; the
    model store is `store` (a running fleet's) or a new empty one in `workdir`."""
    kube = FakeKube()
    install_crd(kube)
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
    store = store or workdir / "store"
    store.mkdir(exist_ok=True)
    try:
        yield Cluster(kube=kube, url=url, store=store)
    finally:
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = previous
        await kube.close_watches()
        await runner.cleanup()


# ---- THE SEAM: the serving replica --------------------------------------------------------------
# A serving pod is the real thing: one fleet TorchServe (`persona serve --model-store STORE --base BASE`,
# started once per test module: it is shared by every replica, as it reads the same store) behind
# the production auth front (persona_serving.front), one front per pod on the pod's IP. Versions are
# published by the real `persona package` code (`publish_version`). Only the two fault knobs no real
# server has need a proxy, and only the tests that turn them get one (`faults=True`).

@contextmanager
def fleet_server(store: Path, base: Path, workdir: Path, **overrides: Any) -> Iterator[ServeOptions]:
    """A real fleet TorchServe over `store` (background, as `persona serve` runs it), stopped on exit
    (`bases=[...]`: a fleet for each)."""
    from persona_serving.server import serve_background, stop

    store.mkdir(parents=True, exist_ok=True)
    options = serve_options(store, base, workdir, max_resident_adapters=OPERATOR_RESIDENT_ADAPTERS, **overrides)
    serve_background(options)
    try:
        yield options
    finally:
        stop(options.workdir)


@dataclass
class FleetReplica:
    """One serving pod as the operator and the tests see it: contract 3 at `inference_url` behind the
    auth front, which takes the operator's token (`token_file`, the management token: the front accepts
    it on both ports, docs/serving.md)."""

    store: Path
    host: str
    port: int
    token_file: Path
    model: str = "fleet"

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class FaultyReplica(FleetReplica):
    """A pod with a proxy before its front for the faults a real server cannot be asked for:
    `frozen` answers unpinned requests as the last table it read (`table`; a worker that stopped
    noticing routing changes: the request goes on pinned to that version), `hold`, when cleared,
    stalls pinned requests (a slow adapter load); `pinned` records what pinned requests asked for."""

    front_url: str = ""
    frozen: bool = False
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    pinned: list[tuple[str, int]] = field(default_factory=list)
    table: RoutingTable = field(default_factory=RoutingTable)

    def __post_init__(self) -> None:
        self.hold.set()

    def app(self, http: httpx.AsyncClient) -> web.Application:
        async def predict(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                body = json.dumps(await self._fault(payload)).encode()
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
            response = await http.post(request.path, content=body, headers=headers)
            return web.Response(status=response.status_code, body=response.content,
                                content_type=response.headers.get("content-type", "application/json").split(";")[0])

        app = web.Application()
        app.router.add_post("/predictions/{model}", predict)
        return app

    async def _fault(self, payload: dict) -> dict:
        if not self.frozen:
            try:
                self.table = read_routing(self.store)
            except PersonaError:  # a bad table is never used: the last good one stays in force
                pass
        persona, version = payload.get("persona"), payload.get("version")
        if version is not None:
            self.pinned.append((persona, version))
            await self.hold.wait()
        elif self.frozen and isinstance(persona, str) and persona in self.table.personas:
            payload["version"] = self.table.personas[persona].serving
        return payload


@asynccontextmanager
async def fleet_replica(server: ServeOptions, workdir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                        token_file: Path | None = None, faults: bool = False,
                        fleets: list | None = None) -> AsyncIterator[FleetReplica]:
    """One serving pod on `host:port`: the production auth front before the real fleet `server`
    (with `faults`, a FaultyReplica's proxy before the front). Replicas of one test share the port
    (pods differ by IP: 127.0.0.1, 127.0.0.2, ...) and the operator's token file. `fleets`
    (persona_serving.bases.Fleet, this pod's first): the pod of one base among several."""
    from persona_serving.bases import BaseRouter
    from persona_serving.front import AuthFront

    workdir.mkdir(parents=True, exist_ok=True)
    if token_file is None:
        token_file = workdir / "management-token"
        token_file.write_text(f"operator-{time.time_ns()}\n")
    inference_token = token_file.with_name("inference-token")  # shared like the Secret, by replicas sharing token_file
    if not inference_token.exists():
        inference_token.write_text(f"bot-{time.time_ns()}\n")
    front = AuthFront(inference_token_file=inference_token, management_token_file=token_file,
                      key_file=server.key_file, inference_backend=server.torchserve_url,
                      management_backend=server.management_url, backend_timeout=120,
                      router=BaseRouter(server.model_store.resolve(), fleets) if fleets else None)
    port = port or free_port()
    front_port = free_port() if faults else port
    stopping = asyncio.Event()
    serving = asyncio.create_task(front.serve(host, front_port, free_port(), stopping))
    await eventually(lambda: serving.done() or _listening(host, front_port), timeout=10)
    if serving.done():
        serving.result()  # the front could not listen: raise its error
    replica: FleetReplica
    async with contextlib.AsyncExitStack() as stack:
        if faults:
            replica = FaultyReplica(store=server.model_store, host=host, port=port, token_file=token_file,
                                    front_url=f"http://{host}:{front_port}")
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=replica.front_url, timeout=None))
            runner = web.AppRunner(replica.app(http), handler_cancellation=True, shutdown_timeout=1)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, host, port).start()
            stack.callback(replica.hold.set)
        else:
            replica = FleetReplica(store=server.model_store, host=host, port=port, token_file=token_file)
        try:
            yield replica
        finally:
            stopping.set()
            await serving


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def place_version(store: Path, run: Path, persona: str, version: int, loss: float, *, publish: bool = True,
                  fidelity: dict | None = None) -> Path:
    """What a successful training Job leaves in the model store (contract 1): the run in `vN/run/`
    (the tiny run, with `report.json` given this eval loss and, if given, these fidelity figures) and,
    with `publish`, the version folder as the Job's last step publishes it (the real `persona package`
    code). Returns the version folder."""
    from persona_training.package import publish_version

    out = version_dir(store, persona, version)
    shutil.copytree(run, out / "run", ignore=shutil.ignore_patterns("merged"), dirs_exist_ok=True)
    report = json.loads((run / "report.json").read_text())
    report.setdefault("eval", {})["after"] = {"loss": loss, "perplexity": round(2.718281828 ** loss, 4)}
    if fidelity is not None:
        report["fidelity"] = report.get("fidelity", {}) | fidelity
    (out / "run" / "report.json").write_text(json.dumps(report))
    return publish_version(out / "run", persona, version, out) if publish else out
