"""`persona serve`: run TorchServe with the fleet model for a model store, locally or as a
container's entrypoint.

At every start the fleet archive (`fleet.mar`: handler, base reference, settings; see
persona_serving.archive) is built into W/models/ - TorchServe's own model store - and registered;
its workers load adapters from the model store given by `--model-store` (passed to them as
$PERSONA_MODEL_STORE) as requests name personas. What serves is the store's routing table.

Everything TorchServe writes lives in one working directory W (default `.persona/serve/`):
`config.properties`, `metrics.yaml`, `logs/`, `tmp/` (TorchServe's java.io.tmpdir and pid file,
so parallel servers never share /tmp state) and `key_file.json` (mode 0600; TorchServe writes it
into its working directory at start). Token authorization stays ON; the management API listens
on 127.0.0.1 only (in a container: behind the auth front, see docs/serving.md).
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
from pathlib import Path

import psutil
from pydantic import BaseModel, Field

from persona_serving.archive import ArchiveOptions, build_fleet_archive
from persona_serving.config import DEFAULT_MAX_PERSONA_LABELS, MODEL_STORE_ENV, FleetConfig
from persona_serving.management import ManagementClient, ManagementError
from persona_serving.metrics import write_metrics_config
from personafleet.client import ENDPOINTS_FILE
from personafleet.errors import PersonaError
from personafleet.inference import FLEET_MODEL, GenerationLimits
from personafleet.lora import MAX_LORA_RANK
from personafleet.routing import RoutingTable, update_routing
from personafleet.store import published_versions

logger = logging.getLogger(__name__)

KEY_FILE = "key_file.json"
PID_FILE = "torchserve.pid"
JAVA_MAIN = "org.pytorch.serve.ModelServer"
DEFAULT_WORKDIR = Path(".persona/serve")


class ServeOptions(BaseModel):
    model_store: Path
    base: str = Field(description="the base model every adapter of the store was trained on (hub id or path)")
    bundle_base: bool = Field(False, description="copy the (local) base into fleet.mar")
    max_resident_adapters: int = Field(32, ge=1, description="adapter slots of each worker (LRU)")
    max_lora_rank: int = Field(MAX_LORA_RANK, ge=1, le=MAX_LORA_RANK, description="widest adapter rank a slot takes")
    max_host_adapters: int = Field(0, ge=0, description="adapters each worker keeps in (pinned) host memory; 0: off")
    max_new_tokens: int = Field(128, ge=1, description="reply length cap (seed 004)")
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
    token_expiration_min: float = Field(60, gt=0, description="TorchServe key lifetime")
    java_heap: str = "1g"
    torch_threads: int | None = Field(
        None, ge=1, description="OMP_NUM_THREADS of the workers: cores / workers on CPU (oversubscribed "
        "OpenMP threads spin and stall); None keeps the environment's"
    )
    startup_timeout_s: float = 300
    auth_token_file: Path | None = Field(None, description="Secret file: the inference token the front accepts")
    management_token_file: Path | None = Field(None, description="Secret file: the management token")
    asr: Path | None = Field(None, description="ASR archive to serve as `asr` (default: STORE/asr/asr.mar if present)")

    @property
    def front(self) -> bool:
        return self.auth_token_file is not None

    @property
    def ts_inference_port(self) -> int:
        return self.backend_ports[0] if self.front else self.inference_port

    @property
    def ts_management_port(self) -> int:
        return self.backend_ports[1] if self.front else self.management_port

    @property
    def inference_url(self) -> str:
        """TorchServe's own inference listener (behind the front when there is one)."""
        host = "127.0.0.1" if self.front or self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.ts_inference_port}"

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
    def links(self) -> Path:
        """TorchServe's own model_store: fleet.mar (and the links the auth front stages)."""
        return self.workdir.resolve() / "models"


def free_port() -> int:
    """An unused 127.0.0.1 port (for tests and benchmarks that run several servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(options: ServeOptions) -> Path:
    """config.properties for this server; returns its path."""
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
        # Only the staged links may be a model source: a .mar is code (ShellTorch, CVE-2023-43654).
        # TorchServe checks every http(s):// and file:// registration url against this; plain
        # names resolve inside model_store (the links directory) anyway.
        "allowed_urls": f"file://{re.escape(str(options.links))}/[^/]+\\.mar",
        "enable_model_api": "true",
        "metrics_mode": "prometheus",
        "metrics_config": str(metrics_yaml),
        # The system-metrics collector starts a Python process (importing torch) every minute:
        # seconds of CPU stolen from inference. Kubernetes has cAdvisor/DCGM for host metrics.
        "disable_system_metrics": "true",
        "token_expiration_min": str(options.token_expiration_min),
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


def _environment(options: ServeOptions) -> dict[str, str]:
    """TorchServe's environment; the Python workers inherit it."""
    workdir = options.workdir.resolve()
    tmp = str(workdir / "tmp")
    # TEMP -> java.io.tmpdir; TMPDIR -> where the `torchserve` launcher keeps its pid file.
    env = os.environ | {"TEMP": tmp, "TMPDIR": tmp, "LOG_LOCATION": str(workdir / "logs"),
                        "METRICS_LOCATION": str(workdir / "logs"), MODEL_STORE_ENV: str(options.model_store.resolve())}
    if options.torch_threads is not None:
        env["OMP_NUM_THREADS"] = str(options.torch_threads)
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


def start(options: ServeOptions) -> int:
    """Start TorchServe in the background and return the JVM's pid (written to W/torchserve.pid)."""
    workdir = options.workdir.resolve()
    if not options.model_store.is_dir():
        raise PersonaError(f"model store {options.model_store} is not a directory")
    if (pid := running_pid(workdir)) is not None:
        raise PersonaError(f"TorchServe already runs from {workdir} (pid {pid}); `persona serve --stop` first")
    config = write_config(options)
    build_fleet_archive(options.links, fleet_config(options), options=options.archive)
    (workdir / KEY_FILE).unlink(missing_ok=True)
    launcher_pid_file = workdir / "tmp" / ".model_server.pid"
    launcher_pid_file.unlink(missing_ok=True)
    with open(workdir / "logs" / "torchserve.out", "ab") as out:
        # The JVM inherits stdout: a file, never a pipe, or whoever reads the pipe hangs.
        subprocess.run(
            [str(Path(sys.executable).with_name("torchserve")), "--start", "--ncs",
             "--ts-config", str(config), "--model-store", str(options.links)],
            cwd=workdir, env=_environment(options), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, check=True,
        )
    pid = int(launcher_pid_file.read_text().strip())
    (workdir / PID_FILE).write_text(str(pid))
    (workdir / ENDPOINTS_FILE).write_text(json.dumps(endpoints(options), indent=2), encoding="utf-8")
    return pid


def stop(workdir: Path, timeout: float = 60) -> bool:
    """Stop the TorchServe serving from `workdir` and wait for it to exit; False if none ran."""
    workdir = workdir.resolve()
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
    for name in (PID_FILE, KEY_FILE, ENDPOINTS_FILE):
        (workdir / name).unlink(missing_ok=True)
    return True


def fleet_config(options: ServeOptions) -> FleetConfig:
    """The handler's settings; a local base path is made absolute (workers run elsewhere)."""
    base = str(Path(options.base).resolve()) if Path(options.base).exists() else options.base
    return FleetConfig(
        base=base, bundled_base=options.bundle_base, model_store=str(options.model_store.resolve()),
        max_resident_adapters=options.max_resident_adapters, max_lora_rank=options.max_lora_rank,
        max_host_adapters=options.max_host_adapters, max_persona_labels=options.max_persona_labels,
        limits=GenerationLimits(max_new_tokens=options.max_new_tokens),
    )


async def wait_until_up(options: ServeOptions, pid: int) -> None:
    """Until the management API answers with the key TorchServe wrote (or the JVM dies)."""
    deadline = time.monotonic() + options.startup_timeout_s
    async with ManagementClient(options.management_url, token_file=options.key_file, timeout=5) as management:
        while True:
            if not alive(pid):
                raise PersonaError(f"TorchServe exited during start; see {options.workdir / 'logs'}")
            if options.key_file.exists():
                try:
                    await management.list_models()
                    return
                except ManagementError:
                    pass
            if time.monotonic() > deadline:
                raise PersonaError(f"TorchServe not up after {options.startup_timeout_s:.0f} s; see {options.workdir / 'logs'}")
            await asyncio.sleep(0.3)


async def register_fleet(options: ServeOptions) -> None:
    """Register `fleet.mar` (built by `start`) with its workers up before returning."""
    async with ManagementClient(options.management_url, token_file=options.key_file,
                                timeout=options.startup_timeout_s) as management:
        try:
            await management.register(f"{FLEET_MODEL}.mar", initial_workers=None, synchronous=True)
        except ManagementError as exc:
            raise PersonaError(f"cannot load the fleet model: {exc}; see {options.workdir / 'logs'}") from exc


async def register_asr_model(options: ServeOptions, *, required: bool = True) -> dict[str, str]:
    """The ASR model beside the personas, when the store (or `--asr`) has one: {"asr": version}.
    Not `required` (a serving pod): a speech model that cannot load (e.g. the hub unreachable) is
    logged and left out, the personas still serve, the bot apologises for voice messages."""
    from persona_serving.asr_serving import find_asr, register_asr

    archive = find_asr(options.model_store, options.asr)
    if archive is None:
        return {}
    try:
        version = await register_asr(options.management_url, options.key_file, options.links, archive,
                                     options.startup_timeout_s)
    except PersonaError as exc:
        if required:
            raise
        logger.error("Serving without speech recognition: %s", exc)
        return {}
    return {"asr": version}



def route_unlisted(store: Path) -> RoutingTable:
    """Locally, a persona published but not yet in the routing table serves its newest version
    (in a cluster the operator writes the table); the table as written."""
    published = published_versions(store)

    def add_unlisted(table: RoutingTable) -> None:
        for persona, versions in published.items():
            if persona not in table.personas:
                table.add(persona, versions[-1], serve=True)

    return update_routing(store, add_unlisted)


def serve_background(options: ServeOptions) -> RoutingTable:
    """`persona serve`: route unlisted personas, start, register the fleet model, return the
    routing table once the fleet answers; stop again on failure."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    if not options.model_store.is_dir():
        raise PersonaError(f"model store {options.model_store} is not a directory")
    table = route_unlisted(options.model_store)
    pid = start(options)
    try:
        asyncio.run(wait_until_up(options, pid))
        asyncio.run(register_fleet(options))
        if asyncio.run(register_asr_model(options)):
            logger.info("Serving speech recognition as `asr`")
    except BaseException:
        stop(options.workdir)
        raise
    return table


def endpoints(options: ServeOptions) -> dict[str, str]:
    """Where TorchServe listens; saved as `endpoints.json` beside the key file for clients."""
    return {
        "inference": options.inference_url,
        "management": options.management_url,
        "metrics": f"{options.metrics_url}/metrics",
        "key_file": str(options.key_file),
    }


def serve_foreground(options: ServeOptions) -> int:
    """The container entrypoint: start TorchServe, register the fleet model, open the auth front
    (when token files are given), then stay until SIGTERM/SIGINT - stopping TorchServe - or until
    TorchServe dies (exit status 1, so the pod restarts)."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    pid = start(options)

    async def run() -> int:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await wait_until_up(options, pid)
        await register_fleet(options)
        asr = await register_asr_model(options, required=False)
        logger.info("Serving the fleet of %s from %s%s", options.base, options.model_store, " and `asr`" if asr else "")
        front = asyncio.create_task(_front(options, stopping)) if options.front else None
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


async def _front(options: ServeOptions, stopping: asyncio.Event) -> None:
    from persona_serving.front import AuthFront

    front = AuthFront(
        inference_token_file=options.auth_token_file,  # type: ignore[arg-type]
        management_token_file=options.management_token_file,
        key_file=options.key_file,
        inference_backend=options.inference_url,
        management_backend=options.management_url,
        model_store=options.model_store.resolve(),
        links=options.links,
    )
    await front.serve(options.host, options.inference_port, options.management_port, stopping)
