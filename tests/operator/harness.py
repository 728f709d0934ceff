"""The operator test harness: the fake cluster seen from the test, the operator in a thread, helpers.

The tests play the parts no process here can: the Job controller (`finish_job` sets a Job's
status after the test placed what `persona train`/`package` would have written into the model
store) and the kubelet (`add_serving_pod` creates a Ready pod whose IP is a serving replica's,
`fleet_replica`: the one seam where the real fleet TorchServe plugs in).
"""

from __future__ import annotations

import asyncio
import json
import shutil
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
from personafleet.errors import PersonaError
from personafleet.inference import InferenceRequest
from personafleet.routing import RoutingTable, read_routing, version_dir
from tests.fixtures.torchserve import free_port
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


# ---- THE SEAM: the serving replica --------------------------------------------------------------
# `fleet_replica` stands in for one pod of the fleet TorchServe (contract 3) until that lands on this
# branch; at merge the lead swaps its body for the real `persona serve --model-store STORE --base BASE`
# behind the auth front, and `place_version` for the real `persona package`. The tests use nothing
# else of it than what the real one offers: its inference URL and token, plus the fault knobs below.

@dataclass
class FleetReplica:
    """A strict stand-in for one serving pod: `POST /predictions/<model>` as contract 3 says, the routing
    table read through `personafleet.routing` on every request (a real worker stats it per batch), a
    404 for an unknown persona or version, a 503 when the version folder is not a complete published
    version (version.json naming it, adapter/adapter_config.json), the bearer token checked.

    Fault knobs: `frozen` keeps answering from the last table read (a worker that stopped noticing
    routing changes); `hold`, when cleared, stalls pinned requests (a slow adapter load);
    `pinned` records the versions pinned requests asked for."""

    store: Path
    host: str
    port: int
    token_file: Path
    model: str = "fleet"
    frozen: bool = False
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    pinned: list[tuple[str, int]] = field(default_factory=list)
    table: RoutingTable = field(default_factory=RoutingTable)  # the last table read

    def __post_init__(self) -> None:
        self.hold.set()

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/predictions/{model}", self._predict)
        return app

    def _routing(self) -> RoutingTable:
        if not self.frozen:
            try:
                self.table = read_routing(self.store)
            except PersonaError:  # a bad table is never used: the last good one stays in force
                pass
        return self.table

    async def _predict(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token_file.read_text().strip()}":
            return web.json_response({"code": 401, "type": "Unauthorized", "message": "Token Authorization failed"},
                                     status=401)
        if request.match_info["model"] != self.model:
            return web.json_response({"code": 404, "type": "ModelNotFoundException",
                                      "message": f"Model not found: {request.match_info['model']}"}, status=404)
        try:
            body = await request.json()
            persona, version = body.pop("persona"), body.pop("version", None)
            if not isinstance(persona, str) or not (version is None or (type(version) is int and version >= 1)):
                raise ValueError("persona must be a name, version a positive integer")
            InferenceRequest.model_validate({**body, "persona": persona})
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            return _error(400, "bad_request", str(exc))
        table = self._routing()
        if version is not None:
            self.pinned.append((persona, version))
            await self.hold.wait()
        answering = table.resolve(persona, version)
        if answering is None:
            if persona not in table.personas:
                return _error(404, "unknown_persona", f"no persona {persona!r} is routed")
            return _error(404, "unknown_version", f"{persona} has no version {version} in the routing table")
        folder = version_dir(self.store, persona, answering)
        try:
            published = json.loads((folder / "version.json").read_text())
            complete = (published["persona"], published["version"]) == (persona, answering)
        except (OSError, ValueError, KeyError, TypeError):
            complete = False
        if not complete or not (folder / "adapter" / "adapter_config.json").is_file():
            return _error(503, "adapter_unavailable", f"{folder} is not a complete published version")
        return web.json_response({"reply": f"{persona} v{answering}", "persona": persona,
                                  "model_version": str(answering), "tokens": 2})


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@asynccontextmanager
async def fleet_replica(store: Path, workdir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                        token_file: Path | None = None) -> AsyncIterator[FleetReplica]:
    """One serving pod on `host:port` reading `store` (THE SEAM, see above). Replicas of one test share
    the port (pods differ by IP: 127.0.0.1, 127.0.0.2, ...) and the operator's token file."""
    workdir.mkdir(parents=True, exist_ok=True)
    if token_file is None:
        token_file = workdir / "management-token"
        token_file.write_text(f"operator-{time.time_ns()}\n")
    replica = FleetReplica(store=store, host=host, port=port or free_port(), token_file=token_file)
    runner = web.AppRunner(replica.app(), handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, host, replica.port).start()
    try:
        yield replica
    finally:
        replica.hold.set()
        await runner.cleanup()


def place_version(store: Path, run: Path, persona: str, version: int, loss: float, *, publish: bool = True) -> Path:
    """What a successful training Job leaves in the model store (contract 1): `run/report.json` with
    the given eval loss and, with `publish`, the version folder `persona package` writes (adapter/,
    persona.json, version.json last) from the tiny run. Returns the version folder."""
    out = version_dir(store, persona, version)
    (out / "run").mkdir(parents=True, exist_ok=True)
    report = json.loads((run / "report.json").read_text())
    report.setdefault("eval", {})["after"] = {"loss": loss, "perplexity": round(2.718281828 ** loss, 4)}
    (out / "run" / "report.json").write_text(json.dumps(report))
    if publish:
        (out / "adapter").mkdir(exist_ok=True)
        for item in run.iterdir():
            if item.is_file() and item.name not in ("report.json", "persona.json") and item.suffix != ".png":
                shutil.copy2(item, out / "adapter" / item.name)
        spec = json.loads((run / "persona.json").read_text())
        (out / "persona.json").write_text(json.dumps({**spec, "name": persona}, ensure_ascii=False))
        (out / "version.json").write_text(json.dumps({"persona": persona, "version": version,
                                                      "base": report.get("base_model")}))
    return out
