"""`persona serve`: run TorchServe with the fleet models for a model store, locally or as a
container's entrypoint.

At every start one fleet archive per base (`fleet.mar`, or `fleet-<base name>.mar` for each of
several bases: handler, base reference, settings; see persona_serving.archive) is built into
W/models/ - TorchServe's own model store - beside a link to the speech model's archive, when
there is one, and TorchServe loads them at start with its model API OFF: no model can be
registered (or unregistered) afterwards, from any source - a model is code, and TorchServe 0.12
registers an unpacked folder at any absolute path unchecked. The fleets' workers load adapters
from the model store given by `--model-store` (passed to them as $PERSONA_MODEL_STORE) as requests
name personas. What serves is the store's routing table. With several bases (or other bases'
fleets given with `--fleet`) a front on the inference port sends each request to the fleet of its
persona's base (persona_serving.bases); run in the background, it is a process of its own.

Everything TorchServe writes lives in one working directory W (default `.persona/serve/`):
`config.properties`, `metrics.yaml`, `logs/`, `tmp/` (TorchServe's java.io.tmpdir and pid file,
so parallel servers never share /tmp state) and `key_file.json` (mode 0600; TorchServe writes it
into its working directory at start). Token authorization stays ON; the management API listens
on 127.0.0.1 only (in a container: behind the auth front, see docs/serving.md). Without the front,
clients get `inference-token` (mode 0600): the inference key alone, never the key file, whose API
key mints management keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil
from pydantic import BaseModel, Field

from persona_serving.archive import ArchiveOptions, build_fleet_archive
from persona_serving.asr import ASR_MODEL_NAME
from persona_serving.asr_serving import find_asr, link_asr
from persona_serving.bases import BaseRouter, Fleet, fleet_names
from persona_serving.config import DEFAULT_MAX_PERSONA_LABELS, MODEL_STORE_ENV, FleetConfig
from persona_serving.management import ManagementClient, ManagementError
from persona_serving.metrics import write_metrics_config
from persona_serving.reply_filter import ReplyFilter, held_out_warning
from personafleet.client import ENDPOINTS_FILE, TokenSource
from personafleet.errors import PersonaError
from personafleet.family import base_reference
from personafleet.files import write_text_atomic
from personafleet.inference import GenerationLimits
from personafleet.lora import MAX_LORA_RANK
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.reply_rules import ReplyFilterRules
from personafleet.routing import RoutingTable, read_routing, update_routing, version_dir
from personafleet.store import held_out_replies, published_version, published_versions

logger = logging.getLogger(__name__)

KEY_FILE = "key_file.json"
INFERENCE_TOKEN_FILE = "inference-token"
PID_FILE = "torchserve.pid"
FRONT_PID_FILE = "front.pid"  # the routing front of a background server with several bases
FRONT_OPTIONS_FILE = "front.json"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # a container's CPU limit (cgroup v2): "QUOTA PERIOD" or "max PERIOD"
# Without the auth front no process renews the key clients hold (a client with the inference key
# alone cannot), so TorchServe's keys live as long as the server: ten years.
LOCAL_KEY_LIFETIME_MIN = 10 * 365 * 24 * 60
JAVA_MAIN = "org.pytorch.serve.ModelServer"
DEFAULT_WORKDIR = Path(".persona/serve")


class ServeOptions(BaseModel):
    model_store: Path
    bases: list[str] = Field(
        default_factory=list, description="base models served here, one fleet each (hub ids or paths); empty: "
        "every base the store's routing table uses")
    fleets: dict[str, str] = Field(
        default_factory=dict, description="other bases' fleets (in a cluster): base model -> inference URL of its "
        "serving Service; the front forwards their personas' requests there")
    bundle_base: bool = Field(False, description="copy the (local) base into fleet.mar")
    max_resident_adapters: int = Field(32, ge=1, description="adapter slots of each worker (LRU)")
    max_lora_rank: int = Field(MAX_LORA_RANK, ge=1, le=MAX_LORA_RANK, description="widest adapter rank a slot takes")
    max_host_adapters: int = Field(0, ge=0, description="adapters each worker keeps in (pinned) host memory; 0: off")
    max_new_tokens: int = Field(128, ge=1, description="reply length cap (seed 004)")
    max_cached_tokens: int = Field(16384, ge=1, description="key/value cache columns a worker's live rows may reserve")
    max_persona_labels: int = Field(DEFAULT_MAX_PERSONA_LABELS, ge=0, description='personas with their own metrics label (the rest: persona="other")')
    archive: ArchiveOptions = Field(default_factory=ArchiveOptions)
    workdir: Path = DEFAULT_WORKDIR
    host: str = Field("127.0.0.1", description="address the public listeners bind (0.0.0.0 in a pod)")
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_ports: tuple[int, int] = Field((7070, 7071), description="TorchServe always starts gRPC: localhost only, unused")
    backend_ports: tuple[int, int] = Field(
        (18080, 18081), description="TorchServe's own inference and management ports behind the auth front (127.0.0.1)"
    )
    token_expiration_min: float | None = Field(
        None, gt=0, description="TorchServe key lifetime; None: 60 min behind the auth front (it renews them), "
        "else the server's lifetime (LOCAL_KEY_LIFETIME_MIN: its clients hold the inference key alone)"
    )
    java_heap: str = "1g"
    torch_threads: int | None = Field(
        None, ge=1, description="OMP_NUM_THREADS of the workers (oversubscribed OpenMP threads spin and "
        "stall); None: the environment's, else the usable cores / the models served (one worker each)"
    )
    startup_timeout_s: float = 300
    auth_token_file: Path | None = Field(None, description="Secret file: the inference token the front accepts")
    management_token_file: Path | None = Field(None, description="Secret file: the management token")
    asr: Path | None = Field(None, description="ASR archive to serve as `asr` (default: STORE/asr/asr.mar if present)")
    reply_filter: ReplyFilterRules | None = Field(None, description="the fleet's reply filter (added to each persona's)")

    @property
    def auth(self) -> bool:
        """Clients present the Secret's tokens to a front on both public ports (a pod)."""
        return self.auth_token_file is not None

    @property
    def routing(self) -> bool:
        """Requests are routed to the fleet of their persona's base by a front on the inference port."""
        return len(self.bases) > 1 or bool(self.fleets)

    @property
    def front(self) -> bool:
        return self.auth or self.routing

    @property
    def ts_inference_port(self) -> int:
        return self.backend_ports[0] if self.front else self.inference_port

    @property
    def ts_management_port(self) -> int:
        return self.backend_ports[1] if self.auth else self.management_port

    @property
    def torchserve_url(self) -> str:
        """TorchServe's own inference listener (behind the front when there is one)."""
        host = "127.0.0.1" if self.front or self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.ts_inference_port}"

    @property
    def inference_url(self) -> str:
        """Where local clients send predictions: the routing front when there is one without Secrets,
        else TorchServe itself (behind an auth front: the pod-local way in)."""
        if self.routing and not self.auth:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
            return f"http://{host}:{self.inference_port}"
        return self.torchserve_url

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ts_management_port}"

    @property
    def metrics_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.metrics_port}"

    @property
    def key_file(self) -> Path:
        return self.workdir.resolve() / KEY_FILE

    @property
    def key_lifetime_min(self) -> float:
        if self.token_expiration_min is not None:
            return self.token_expiration_min
        return 60 if self.auth else LOCAL_KEY_LIFETIME_MIN

    @property
    def inference_token_file(self) -> Path:
        """What clients of a server without the auth front get: TorchServe's inference key alone (the
        routing front of a local server with several bases accepts it too)."""
        return self.workdir.resolve() / INFERENCE_TOKEN_FILE

    @property
    def links(self) -> Path:
        """TorchServe's own model_store: fleet.mar and the asr.mar link, loaded at start."""
        return self.workdir.resolve() / "models"


def free_port() -> int:
    """An unused 127.0.0.1 port (for tests and benchmarks that run several servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(options: ServeOptions, models: Sequence[str]) -> Path:
    """config.properties for this server, loading `models` (archives `<name>.mar` in
    `options.links`) at start; returns its path."""
    workdir = options.workdir.resolve()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    metrics_yaml = write_metrics_config(workdir / "metrics.yaml")
    options.links.mkdir(exist_ok=True)
    properties = {
        "inference_address": f"http://{'127.0.0.1' if options.front else options.host}:{options.ts_inference_port}",
        "management_address": options.management_url,
        "metrics_address": f"http://{options.host}:{options.metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(options.grpc_ports[0]),
        "grpc_management_port": str(options.grpc_ports[1]),
        "model_store": str(options.links),
        # A model is code (ShellTorch, CVE-2023-43654): the models are loaded at start, and the model
        # API (register, unregister; REST and gRPC) is off, so nothing else is ever loaded.
        "load_models": ",".join(f"{name}={name}.mar" for name in models),
        "enable_model_api": "false",
        # Defence in depth, should the model API ever be turned on: no http(s):// or file:// source
        # but the links directory (TorchServe does not check plain paths against this).
        "allowed_urls": f"file://{re.escape(str(options.links))}/[^/]+\\.mar",
        "metrics_mode": "prometheus",
        "metrics_config": str(metrics_yaml),
        # The system-metrics collector starts a Python process (importing torch) every minute:
        # seconds of CPU stolen from inference. Kubernetes has cAdvisor/DCGM for host metrics.
        "disable_system_metrics": "true",
        "token_expiration_min": str(options.key_lifetime_min),
        "default_workers_per_model": "1",
        "install_py_dep_per_model": "false",
        "vmargs": f"-Xmx{options.java_heap} -XX:+ExitOnOutOfMemoryError -Djava.io.tmpdir={workdir / 'tmp'}",
    }
    path = workdir / "config.properties"
    path.write_text("".join(f"{key}={_escaped(value)}\n" for key, value in properties.items()), encoding="utf-8")
    return path


def _escaped(value: str) -> str:
    """A backslash is an escape character in a .properties file: doubled, a regex arrives intact."""
    return value.replace("\\", "\\\\")


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its container's CPU limit (a
    pod's `limits.cpu`; the node's cores are all in the affinity)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def worker_threads(options: ServeOptions, workers: int) -> int | None:
    """The workers' OMP_NUM_THREADS: `--torch-threads`, else the environment's (None), else the usable
    cores shared among the workers. Left to torch, every worker takes every core: with two fleets
    and the speech model on 2 cores, 6 OpenMP threads spin-wait on each other."""
    if options.torch_threads is not None or "OMP_NUM_THREADS" in os.environ:
        return options.torch_threads
    return max(1, usable_cores() // workers)


def _environment(options: ServeOptions, workers: int) -> dict[str, str]:
    """TorchServe's environment; the Python workers inherit it."""
    workdir = options.workdir.resolve()
    tmp = str(workdir / "tmp")
    # TEMP -> java.io.tmpdir; TMPDIR -> where the `torchserve` launcher keeps its pid file.
    env = os.environ | {"TEMP": tmp, "TMPDIR": tmp, "LOG_LOCATION": str(workdir / "logs"),
                        "METRICS_LOCATION": str(workdir / "logs"), MODEL_STORE_ENV: str(options.model_store.resolve())}
    if (threads := worker_threads(options, workers)) is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def running_pid(workdir: Path) -> int | None:
    """The TorchServe JVM serving from `workdir`, if it is alive."""
    try:
        pid = int((workdir / PID_FILE).read_text().strip())
        if JAVA_MAIN in " ".join(psutil.Process(pid).cmdline()):
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def alive(pid: int) -> bool:
    """Whether the JVM still runs. As a container's PID 1 we inherit it when `torchserve --start`
    exits, and a dead child we have not reaped is a zombie that `pid_exists` still reports."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and dead
    except ChildProcessError:
        pass
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def startup_models(options: ServeOptions, *, asr_required: bool = True) -> list[str]:
    """Put what TorchServe loads at start into its own model store (W/models): a fleet archive per
    base, built, and the speech model's, linked when there is one (`stage_asr`). With the model API off
    these are all the models the server will run; their names."""
    if not options.bases:
        raise PersonaError("no base to serve: pass --base (or publish a version, whose base the routing table records)")
    names = fleet_names(options.bases)
    for base, name in zip(options.bases, names):
        build_fleet_archive(options.links, fleet_config(options, base), options=options.archive, name=name)
    return [*names, *stage_asr(options, required=asr_required)]


def stage_asr(options: ServeOptions, *, required: bool) -> list[str]:
    """`["asr"]` once the store's (or `--asr`) archive is linked as W/models/asr.mar, `[]` when there is
    none. Not `required` (a serving pod): an archive that cannot be served is logged and left out,
    the personas still serve, the bot apologises for voice messages."""
    (options.links / f"{ASR_MODEL_NAME}.mar").unlink(missing_ok=True)
    try:
        archive = find_asr(options.model_store, options.asr)
        if archive is None:
            return []
        link_asr(options.links, archive)
    except PersonaError as exc:
        if required:
            raise
        logger.error("Serving without speech recognition: %s", exc)
        return []
    return [ASR_MODEL_NAME]


def start(options: ServeOptions, models: Sequence[str]) -> int:
    """Start TorchServe in the background loading `models` (see `startup_models`); return the JVM's
    pid (written to W/torchserve.pid)."""
    workdir = options.workdir.resolve()
    if not options.model_store.is_dir():
        raise PersonaError(f"model store {options.model_store} is not a directory")
    if (pid := running_pid(workdir)) is not None:
        raise PersonaError(f"TorchServe already runs from {workdir} (pid {pid}); `persona serve --stop` first")
    for warning in reply_filter_warnings(options.model_store, options.reply_filter):
        logger.warning("%s", warning)
    config = write_config(options, models)
    for name in (KEY_FILE, INFERENCE_TOKEN_FILE):
        (workdir / name).unlink(missing_ok=True)
    launcher_pid_file = workdir / "tmp" / ".model_server.pid"
    launcher_pid_file.unlink(missing_ok=True)
    with open(workdir / "logs" / "torchserve.out", "ab") as out:
        # The JVM inherits stdout: a file, never a pipe, or whoever reads the pipe hangs.
        subprocess.run(
            [str(Path(sys.executable).with_name("torchserve")), "--start", "--ncs",
             "--ts-config", str(config), "--model-store", str(options.links)],
            cwd=workdir, env=_environment(options, len(models)), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, check=True,
        )
    pid = int(launcher_pid_file.read_text().strip())
    (workdir / PID_FILE).write_text(str(pid))
    (workdir / ENDPOINTS_FILE).write_text(json.dumps(endpoints(options), indent=2), encoding="utf-8")
    return pid


def stop(workdir: Path, timeout: float = 60) -> bool:
    """Stop the TorchServe serving from `workdir` (and its routing front) and wait for it to exit;
    False if none ran."""
    workdir = workdir.resolve()
    stop_front(workdir)
    pid = running_pid(workdir)
    if pid is None:
        (workdir / PID_FILE).unlink(missing_ok=True)
        return False
    process = psutil.Process(pid)
    process.terminate()
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        logger.warning("TorchServe (pid %d) did not stop in %.0f s; killing it", pid, timeout)
        process.kill()
        process.wait(10)
    for name in (PID_FILE, KEY_FILE, INFERENCE_TOKEN_FILE, ENDPOINTS_FILE):
        (workdir / name).unlink(missing_ok=True)
    return True


def fleet_config(options: ServeOptions, base: str) -> FleetConfig:
    """The handler's settings for the fleet of `base` (a local path made absolute: workers run elsewhere)."""
    return FleetConfig(
        base=base_reference(base), bundled_base=options.bundle_base, model_store=str(options.model_store.resolve()),
        max_resident_adapters=options.max_resident_adapters, max_lora_rank=options.max_lora_rank,
        max_host_adapters=options.max_host_adapters, max_persona_labels=options.max_persona_labels,
        limits=GenerationLimits(max_new_tokens=options.max_new_tokens), max_cached_tokens=options.max_cached_tokens,
        reply_filter=options.reply_filter,
    )


def reply_filter_warnings(store: Path, fleet_rules: ReplyFilterRules | None) -> list[str]:
    """At start-up: for each persona's serving version, a warning when its reply filter (the
    fleet's rules and its own) blocks most of its real held-out replies. Workers warn again when
    they load a version."""
    warnings = []
    for persona, route in read_routing(store).personas.items():
        folder = version_dir(store, persona, route.serving)
        try:
            published_version(store, persona, route.serving)
            spec = PersonaSpec.model_validate_json((folder / PERSONA_FILE).read_bytes())
        except (PersonaError, OSError, ValueError):
            continue  # the worker reports a version it cannot load
        label = f"{persona} v{route.serving}"
        if warning := held_out_warning(ReplyFilter(fleet_rules, spec.reply_filter), held_out_replies(folder), label):
            warnings.append(warning)
    return warnings


async def wait_until_up(options: ServeOptions, pid: int) -> None:
    """Until the management API answers with the key TorchServe wrote (or the JVM dies); then,
    without the auth front, hand clients the inference key alone (`inference-token`)."""
    deadline = time.monotonic() + options.startup_timeout_s
    async with ManagementClient(options.management_url, token_file=options.key_file, timeout=5) as management:
        while True:
            if not alive(pid):
                raise PersonaError(f"TorchServe exited during start; see {options.workdir / 'logs'}")
            if options.key_file.exists():
                try:
                    await management.list_models()
                    break
                except ManagementError:
                    pass
            if time.monotonic() > deadline:
                raise PersonaError(f"TorchServe not up after {options.startup_timeout_s:.0f} s; see {options.workdir / 'logs'}")
            await asyncio.sleep(0.3)
    if not options.auth:
        hand_out_inference_key(options)


def hand_out_inference_key(options: ServeOptions) -> Path:
    """Write TorchServe's current inference key alone to `inference-token` (mode 0600), what clients
    of a server without the auth front get; again after the key was rotated with the API key."""
    key = TokenSource(token_file=options.key_file, kind="inference").token() or ""
    return write_text_atomic(options.inference_token_file, key + "\n", mode=0o600)


async def wait_until_loaded(options: ServeOptions, pid: int, model: str) -> dict:
    """Until every worker of `model` (loaded at start) is READY; TorchServe's description of it. A
    worker that dies while loading is restarted by TorchServe with back-off, forever, under a new
    pid: seeing a worker's pid change is the failure (a PersonaError), as is the start-up timeout."""
    deadline = time.monotonic() + options.startup_timeout_s
    pids: dict[str, int] = {}
    async with ManagementClient(options.management_url, token_file=options.key_file, timeout=5) as management:
        while True:
            if not alive(pid):
                raise PersonaError(f"TorchServe exited while loading {model}; see {options.workdir / 'logs'}")
            try:
                described = await management.describe(model)
                workers = described["workers"]
            except (ManagementError, LookupError) as exc:
                raise PersonaError(f"TorchServe did not load {model}: {exc}; see {options.workdir / 'logs'}") from None
            if workers and all(worker["status"] == "READY" for worker in workers):
                return described
            for worker in workers:
                if worker.get("pid", -1) > 0 and pids.setdefault(worker["id"], worker["pid"]) != worker["pid"]:
                    raise PersonaError(f"the {model} model's worker died while loading; see "
                                       f"{options.workdir / 'logs' / 'model_log.log'}")
            if time.monotonic() > deadline:
                raise PersonaError(f"{model} not loaded after {options.startup_timeout_s:.0f} s; see {options.workdir / 'logs'}")
            await asyncio.sleep(0.3)


async def wait_until_served(options: ServeOptions, pid: int, models: Sequence[str], *,
                            asr_required: bool = True) -> dict[str, dict]:
    """Until TorchServe is up and each of `models` loaded; the models that serve, with TorchServe's
    description of each. A speech model that does not load is an error unless not `asr_required`
    (a pod): then it is logged and TorchServe keeps retrying its worker with back-off (voice
    messages get the bot's apology meanwhile)."""
    await wait_until_up(options, pid)
    served = {}
    for model in models:
        try:
            served[model] = await wait_until_loaded(options, pid, model)
        except PersonaError as exc:
            if model != ASR_MODEL_NAME or asr_required:
                raise PersonaError(f"cannot load the {model} model: {exc}") from None
            logger.error("Serving without speech recognition for now: %s", exc)
    return served


def front_timeout(served: dict[str, dict]) -> float:
    """How long the auth front waits for TorchServe: twice the longest response timeout of the served
    models (a request may queue behind a batch that takes all of it, then take all of it itself), so
    TorchServe's own timeout fires first and a stuck TorchServe costs a client a 504, not a connection."""
    return 2.0 * max(description["responseTimeout"] for description in served.values())


def local_fleets(options: ServeOptions) -> list[Fleet]:
    """The fleets a front routes to: this server's (in the order given), then other bases' Services."""
    own = [Fleet(base_reference(base), name) for base, name in zip(options.bases, fleet_names(options.bases))]
    return own + [Fleet(base, url=url.rstrip("/")) for base, url in options.fleets.items()]


def route_unlisted(store: Path) -> RoutingTable:
    """Locally, a persona published but not yet in the routing table serves its newest version (in
    a cluster the operator writes the table), and every listed version gets its base recorded (from
    its version.json) where the table lacks it; the table as written."""
    published = published_versions(store)

    def base_of(persona: str, version: int) -> str | None:
        try:
            return published_version(store, persona, version).base
        except PersonaError:
            return None  # not (or no longer) published: the first fleet answers it, as before

    def complete(table: RoutingTable) -> None:
        for persona, versions in published.items():
            if persona not in table.personas:
                table.add(persona, versions[-1], serve=True, base=base_of(persona, versions[-1]))
        for persona, route in table.personas.items():
            for version in route.versions:
                if version not in route.bases and (base := base_of(persona, version)):
                    route.bases[version] = base

    return update_routing(store, complete)


def bases_in_use(table: RoutingTable) -> list[str]:
    """Every base the table records, in the order first met."""
    return list(dict.fromkeys(base for route in table.personas.values() for base in route.bases.values()))


def with_bases(options: ServeOptions, table: RoutingTable) -> ServeOptions:
    """The options with the bases to serve: those given, else those the routing table uses."""
    bases = [base_reference(base) for base in options.bases] or bases_in_use(table)
    return options.model_copy(update={"bases": list(dict.fromkeys(bases))})


def serve_background(options: ServeOptions) -> RoutingTable:
    """`persona serve`: route unlisted personas, start TorchServe with its models (and the routing
    front when several bases are served), return the routing table once they are loaded; stop
    again on failure."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    if not options.model_store.is_dir():
        raise PersonaError(f"model store {options.model_store} is not a directory")
    table = route_unlisted(options.model_store)
    options = with_bases(options, table)
    models = startup_models(options)
    pid = start(options, models)
    try:
        served = asyncio.run(wait_until_served(options, pid, models))
        if ASR_MODEL_NAME in served:
            logger.info("Serving speech recognition as `asr`")
        if options.routing:
            start_front(options, front_timeout(served))
    except BaseException:
        stop(options.workdir)
        raise
    return table


def endpoints(options: ServeOptions) -> dict[str, str]:
    """Where TorchServe listens; saved as `endpoints.json` beside the key file for clients, with the
    inference-only token file they use (no auth front) or the key file of the server itself."""
    client_key = {} if options.auth else {"inference_token": str(options.inference_token_file)}
    return {
        "inference": options.inference_url,
        "management": options.management_url,
        "metrics": f"{options.metrics_url}/metrics",
        **client_key,
        "key_file": str(options.key_file),
    }


def serve_foreground(options: ServeOptions) -> int:
    """The container entrypoint: start TorchServe with its models, open the auth front once they are
    loaded (when token files are given), then stay until SIGTERM/SIGINT - stopping TorchServe - or until
    TorchServe dies (exit status 1, so the pod restarts)."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    options = with_bases(options, read_routing(options.model_store))
    models = startup_models(options, asr_required=False)
    pid = start(options, models)

    async def run() -> int:
        stopping = stop_signal()
        served = await wait_until_served(options, pid, models, asr_required=False)
        logger.info("Serving the fleets of %s from %s%s", ", ".join(options.bases), options.model_store,
                    " and `asr`" if ASR_MODEL_NAME in served else "")
        front = asyncio.create_task(_front(options, stopping, front_timeout(served))) if options.front else None
        while not stopping.is_set():
            if not alive(pid) or (front is not None and front.done()):
                logger.error("TorchServe or the auth front stopped; exiting")
                stopping.set()
                return 1
            await asyncio.sleep(1)
        if front is not None:
            await front
        return 0

    try:
        return asyncio.run(run())
    finally:
        stop(options.workdir)


async def _front(options: ServeOptions, stopping: asyncio.Event, backend_timeout: float) -> None:
    from persona_serving.front import AuthFront

    front = AuthFront(
        # Without Secrets (a local server) the front accepts TorchServe's own inference key.
        inference_token_file=options.auth_token_file or options.key_file,
        management_token_file=options.management_token_file,
        key_file=options.key_file,
        inference_backend=options.torchserve_url,
        management_backend=options.management_url,
        backend_timeout=backend_timeout,
        router=BaseRouter(options.model_store.resolve(), local_fleets(options)) if options.routing else None,
    )
    await front.serve(options.host, options.inference_port, options.management_port if options.auth else None, stopping)


def start_front(options: ServeOptions, backend_timeout: float) -> int:
    """The routing front of a background server, as a process of its own (`persona serve` returns);
    returns its pid once it answers `/ping`."""
    workdir = options.workdir.resolve()
    settings = {"options": options.model_dump(mode="json"), "backend_timeout": backend_timeout}
    (workdir / FRONT_OPTIONS_FILE).write_text(json.dumps(settings), encoding="utf-8")
    with open(workdir / "logs" / "front.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "persona_serving.server", str(workdir / FRONT_OPTIONS_FILE)],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (workdir / FRONT_PID_FILE).write_text(str(process.pid))
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{options.inference_url}/ping", timeout=2).status_code < 500:
                return process.pid
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise PersonaError(f"the routing front did not start; see {workdir / 'logs' / 'front.log'}")
        time.sleep(0.2)


def stop_front(workdir: Path) -> None:
    """Stop the routing front started from `workdir`, if it runs."""
    try:
        process = psutil.Process(int((workdir / FRONT_PID_FILE).read_text().strip()))
        if "persona_serving.server" in " ".join(process.cmdline()):
            process.terminate()
            process.wait(10)
    except (OSError, ValueError, psutil.Error):
        pass
    (workdir / FRONT_PID_FILE).unlink(missing_ok=True)


def stop_signal() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping


def run_front(settings_file: Path) -> None:
    """`python -m persona_serving.server W/front.json`: the routing front until SIGTERM."""
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    options = ServeOptions.model_validate(settings["options"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        await _front(options, stop_signal(), settings["backend_timeout"])

    asyncio.run(main())


if __name__ == "__main__":
    run_front(Path(sys.argv[1]))
