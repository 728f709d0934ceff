"""The container entrypoint (`persona serve --foreground`) with the auth front, as in Kubernetes:
Secret tokens outside, TorchServe's own short-lived keys inside, the fleet loaded at start."""

import asyncio
import contextlib
import functools
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from persona_serving.archive import build_fleet_archive
from persona_serving.config import FleetConfig
from persona_serving.management import ManagementClient, ManagementError
from personafleet.client import InferenceClient, InferenceRejected, TokenSource
from personafleet.inference import InferenceRequest, InferenceResponse, StreamPreview, parse_event
from personafleet.routing import update_routing
from tests.fixtures.torchserve import PERSONA, free_port, hostile_model, publish

pytestmark = pytest.mark.slow

REQUEST = InferenceRequest(message="привет", generation={"max_new_tokens": 3})
KEY_LIFETIME_S = 3


@pytest.fixture(scope="module")
def pod(tiny_run: Path, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pod")
    store = root / "store"
    for version in (1, 2):
        publish(tiny_run, PERSONA, version, store)
    update_routing(store, lambda table: table.add(PERSONA, 1, serve=True))
    secrets = {"inference": root / "inference-token", "management": root / "management-token"}
    secrets["inference"].write_text("inference-secret\n")
    secrets["management"].write_text("management-secret\n")
    ports = {name: free_port() for name in ("inference", "management", "metrics", "backend-inference", "backend-management")}
    command = [
        sys.executable, "-m", "persona_cli", "serve", "--foreground", "--model-store", str(store),
        "--base", str(tiny_base), "--workdir", str(root / "serve"),
        "--inference-port", str(ports["inference"]), "--management-port", str(ports["management"]),
        "--metrics-port", str(ports["metrics"]), "--backend-ports", str(ports["backend-inference"]), str(ports["backend-management"]),
        "--grpc-ports", str(free_port()), str(free_port()),
        "--auth-token-file", str(secrets["inference"]), "--management-token-file", str(secrets["management"]),
        "--token-expiration-min", str(KEY_LIFETIME_S / 60),
    ]
    log = open(root / "entrypoint.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    inference = f"http://127.0.0.1:{ports['inference']}"
    try:
        deadline = time.monotonic() + 180
        while True:  # the front opens only once the fleet is registered: /ping means ready
            assert process.poll() is None, (root / "entrypoint.log").read_text()[-3000:]
            try:
                if httpx.get(f"{inference}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serving pod never became ready"
            time.sleep(0.5)
        yield {"process": process, "inference": inference, "management": f"http://127.0.0.1:{ports['management']}",
               "backend-management": f"http://127.0.0.1:{ports['backend-management']}",
               "secrets": secrets, "workdir": root / "serve", "root": root, "store": store}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(90)
        log.close()


async def test_front_requires_the_secret_token(pod):
    async with httpx.AsyncClient(base_url=pod["inference"], timeout=30) as http:
        anonymous = await http.post("/predictions/fleet", json={"persona": PERSONA, "message": "hi"})
        wrong = await http.post("/predictions/fleet", json={"persona": PERSONA, "message": "hi"}, headers={"Authorization": "Bearer nope"})
        explanation = await http.post("/explanations/fleet", json={"persona": PERSONA, "message": "hi"},
                                      headers={"Authorization": "Bearer inference-secret"})
    async with httpx.AsyncClient(base_url=pod["management"], timeout=30) as http:
        renewal = await http.get("/token", params={"type": "inference"}, headers={"Authorization": "Bearer management-secret"})
    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"
    assert renewal.status_code == 404 and renewal.json()["error"] == "not_found"  # TorchServe's keys stay in the pod
    assert explanation.status_code == 404
    async with ManagementClient(pod["management"], token_file=pod["secrets"]["inference"]) as management:
        with pytest.raises(ManagementError) as refused:
            await management.list_models()
    assert refused.value.status == 401


async def test_front_survives_torchserve_key_expiry(pod):
    async with InferenceClient(pod["inference"], token_file=pod["secrets"]["inference"]) as client:
        first = await client.reply(PERSONA, REQUEST)
        await asyncio.sleep(KEY_LIFETIME_S + 1)  # TorchServe's own keys have expired by now
        second = await client.reply(PERSONA, REQUEST)
    assert first.model_version == second.model_version == "1"


async def test_a_reply_streams_through_the_front_one_event_per_chunk(pod):
    body = {"persona": PERSONA, "message": "как дела?", "generation": {"max_new_tokens": 10, "do_sample": False}}
    chunks: list[bytes] = []
    async with httpx.AsyncClient(base_url=pod["inference"], timeout=60) as http:
        async with http.stream("POST", "/predictions/fleet", json=body,
                               headers={"Authorization": "Bearer inference-secret"}) as response:
            assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
            assert response.headers["content-type"].startswith("application/x-ndjson")
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
    events = [parse_event(line) for line in b"".join(chunks).decode().splitlines()]
    assert len(events) >= 2 and isinstance(events[-1], InferenceResponse)
    assert all(isinstance(event, StreamPreview) for event in events[:-1])


async def test_a_routing_switch_reaches_the_pod_and_the_operators_token_passes_inference(pod):
    update_routing(pod["store"], lambda table: table.add(PERSONA, 2, serve=True))
    # The operator's one token also passes the inference port (its smoke test).
    async with InferenceClient(pod["inference"], token_file=pod["secrets"]["management"]) as client:
        response = await client.reply(PERSONA, REQUEST)
        pinned = await client.reply(PERSONA, REQUEST, version=1)
    assert (response.persona, response.model_version, pinned.model_version) == (PERSONA, "2", "1")
    async with InferenceClient(pod["inference"], token_file=pod["secrets"]["inference"]) as client:
        with pytest.raises(InferenceRejected) as refused:
            await client.reply("no-such-persona", REQUEST)
    assert (refused.value.status, refused.value.error) == (404, "unknown_persona")


@pytest.fixture(scope="module")
def outside(pod, tiny_base: Path):
    """What an attacker holding the management token offers: an archive named `evil` outside the
    store, as a file, as an unpacked folder whose handler writes a marker, and on an HTTP server
    that records every download."""
    root = pod["root"] / "outside"
    archive = build_fleet_archive(root / "built", FleetConfig(base=str(tiny_base)), name="evil")
    shutil.copy(archive, root / "evil.mar")
    unpacked, marker = hostile_model(root)
    downloads: list[str] = []

    class Recording(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            downloads.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Recording, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"root": root, "unpacked": unpacked, "marker": marker,
               "http": f"http://127.0.0.1:{server.server_address[1]}", "downloads": downloads}
    finally:
        server.shutdown()


async def _registered(management_url: str, key: Path) -> set[str]:
    async with ManagementClient(management_url, token_file=key) as management:
        return {model["modelName"] for model in await management.list_models()}


def _sources(outside) -> list[str]:
    root = outside["root"]
    return [f"{outside['http']}/evil.mar", f"file://{root}/evil.mar", str(root / "evil.mar"), str(outside["unpacked"]),
            "../outside/evil.mar", f"{PERSONA}/../../outside/evil.mar", f"FILE:{root}/evil.mar",
            "fleet.mar", "asr.mar", f"{PERSONA}/v1/{PERSONA}.mar"]


async def test_the_front_registers_and_unregisters_nothing(pod, outside):
    """The management port reads what serves, nothing more: every registration (whatever its
    source, the fleet's own name included) and every unregistration is not a route."""
    token = {"Authorization": "Bearer management-secret"}
    async with httpx.AsyncClient(base_url=pod["management"], timeout=60) as http:
        refused = [await http.post("/models", params={"url": url, "synchronous": "true"}, headers=token)
                   for url in _sources(outside)]
        in_body = await http.post("/models", json={"url": f"{outside['http']}/evil.mar"}, headers=token)
        unregister = await http.delete("/models/fleet/1", headers=token)
        described = await http.get("/models/fleet", headers=token)
    for url, response in zip(_sources(outside), refused):
        assert response.status_code == 404 and response.json()["error"] == "not_found", (url, response.text)
    assert in_body.status_code == unregister.status_code == 404
    assert described.status_code == 200 and described.json()[0]["workers"][0]["status"] == "READY"
    assert outside["downloads"] == [] and not outside["marker"].exists()
    assert await _registered(pod["management"], pod["secrets"]["management"]) == {"fleet"}
    async with InferenceClient(pod["inference"], token_file=pod["secrets"]["inference"]) as client:
        assert (await client.reply(PERSONA, REQUEST)).persona == PERSONA


async def test_torchserve_itself_registers_nothing_after_start(pod, outside):
    """Past the front, on TorchServe's own management port with the pod-local key: its model API is
    off, so no source registers (TorchServe 0.12 would run an unpacked folder's handler from any
    absolute path) and nothing unregisters."""
    key = pod["workdir"] / "key_file.json"
    headers = TokenSource(token_file=key, kind="management").headers()
    async with httpx.AsyncClient(base_url=pod["backend-management"], timeout=60) as http:
        refused = [await http.post("/models", params={"url": url, "initial_workers": "1", "synchronous": "true"},
                                   headers=headers) for url in _sources(outside)]
        unregister = await http.delete("/models/fleet/1", headers=headers)
    assert {r.status_code for r in refused} == {405} and unregister.status_code == 405, [r.text for r in refused]
    assert outside["downloads"] == [] and not outside["marker"].exists()
    assert await _registered(pod["backend-management"], key) == {"fleet"}


@pytest.mark.parametrize("port", ["inference", "management"])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/predictions/..%2Fapi-description"), ("POST", f"/predictions/{PERSONA}%2F..%2F..%2Fapi-description"),
    ("GET", "/./token?type=inference"), ("GET", "/x/../token?type=inference"), ("GET", "/%2e/token?type=inference"),
    ("GET", "/%2E%2E/token?type=inference"), ("POST", f"/predictions/./{PERSONA}"),
])
def test_front_refuses_dot_segments_and_escapes_in_the_raw_path(pod, port, method, path):
    """Sent byte for byte (http.client does not normalise the path, unlike httpx)."""
    host, number = pod[port].removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(number), timeout=60)
    secret = "inference-secret" if port == "inference" else "management-secret"
    connection.request(method, path, body=json.dumps({"message": "hi"}),
                       headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 400 and body["error"] == "invalid_path", (path, body)


def test_sigterm_stops_torchserve_and_exits_cleanly(pod):
    pod["process"].send_signal(signal.SIGTERM)
    assert pod["process"].wait(90) == 0
    assert not (pod["workdir"] / "torchserve.pid").exists()
    assert not (pod["workdir"] / "key_file.json").exists()


async def stand_in(handle) -> tuple[web.AppRunner, int]:
    """A server standing in for what the front forwards to (TorchServe, another base's front):
    every path answered by `handle`; (its runner, to clean up, and its port)."""
    runner = web.AppRunner(web.Application(), handle_signals=False, shutdown_timeout=0.1)
    runner.app.router.add_route("*", "/{tail:.*}", handle)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def front_keys(tmp_path: Path, client_token: str) -> dict[str, Path]:
    """The token file clients present and TorchServe's key file (`local-<kind>` keys), for AuthFront."""
    (tmp_path / "inference-token").write_text(client_token)
    (tmp_path / "key_file.json").write_text(json.dumps({key: {"key": f"local-{key}"} for key in ("inference", "management", "API")}))
    return {"inference_token_file": tmp_path / "inference-token", "key_file": tmp_path / "key_file.json"}


async def until_listening(port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def front_before(handle, tmp_path: Path, token: str, backend_timeout: float):
    """An AuthFront accepting `token` before a stand-in TorchServe answering with `handle`; yields the
    front's port once it listens, and stops both."""
    from persona_serving.front import AuthFront

    upstream, upstream_port = await stand_in(handle)
    front_port = free_port()
    front = AuthFront(**front_keys(tmp_path, token), management_token_file=None,
                      inference_backend=f"http://127.0.0.1:{upstream_port}",
                      management_backend=f"http://127.0.0.1:{free_port()}", backend_timeout=backend_timeout)
    stopping = asyncio.Event()
    serving = asyncio.create_task(front.serve("127.0.0.1", front_port, None, stopping))
    try:
        await until_listening(front_port)
        yield front_port
    finally:
        stopping.set()
        await serving
        await upstream.cleanup()


async def test_a_stuck_torchserve_gets_a_504_with_a_reason_not_a_connection_held_forever(tmp_path):
    """The front's calls to TorchServe are bounded (above TorchServe's own response timeout): a
    backend that accepts the request and never answers costs the client a 504, not its connection."""
    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with front_before(never, tmp_path, "bot-token", backend_timeout=1) as front_port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front_port}") as http:
            started = time.monotonic()
            response = await asyncio.wait_for(http.post(
                "/predictions/fleet", json={"persona": PERSONA, "message": "hi"},
                headers={"Authorization": "Bearer bot-token"}, timeout=30), 20)
    assert response.status_code == 504 and response.json()["error"] == "backend_timeout"
    assert "1 s" in response.json()["detail"] and time.monotonic() - started < 10


async def test_replies_stream_through_every_path_of_the_routing_front_and_a_client_leaving_closes_them(tmp_path):
    """With several bases the front sends a prediction to this TorchServe's model of the persona's
    base or to another base's Service; either answer is relayed event by event as it comes, and a
    client that leaves mid-reply closes the stream upstream (which retires the row there)."""
    from persona_serving.bases import FORWARDED_HEADER, BaseRouter, Fleet
    from persona_serving.front import AuthFront

    events, closed, seen = 400, {}, {}

    async def fleet(request: web.Request) -> web.StreamResponse:
        """A fleet streaming a long reply, an event every 10 ms, as TorchServe and a front do."""
        where = request.path
        seen[where] = (request.headers.get("Authorization"), request.headers.get(FORWARDED_HEADER))
        closed[where] = asyncio.Event()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for token in range(1, events + 1):
                await response.write(json.dumps({"delta": "да ", "tokens": token}).encode() + b"\n")
                await asyncio.sleep(0.01)
            final = {"reply": "да " * events, "persona": "x", "model_version": "1", "tokens": events}
            await response.write(json.dumps(final).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            closed[where].set()  # its client (the front) went away
        return response

    upstream, upstream_port = await stand_in(fleet)
    front_port = free_port()
    store = tmp_path / "store"
    store.mkdir()
    update_routing(store, lambda table: (table.add("near", 1, serve=True, base="/bases/t5"),
                                         table.add("far", 1, serve=True, base="/bases/causal")))
    router = BaseRouter(store, [Fleet("/bases/t5", "fleet-t5"), Fleet("/bases/causal", url=f"http://127.0.0.1:{upstream_port}")])
    front = AuthFront(**front_keys(tmp_path, "cluster-secret"), management_token_file=None,
                      inference_backend=f"http://127.0.0.1:{upstream_port}",
                      management_backend=f"http://127.0.0.1:{free_port()}", backend_timeout=30, router=router)
    stopping = asyncio.Event()
    serving = asyncio.create_task(front.serve("127.0.0.1", front_port, None, stopping))
    paths = {"near": "/predictions/fleet-t5", "far": "/predictions/fleet"}  # this TorchServe's model; the other Service
    try:
        await until_listening(front_port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front_port}", timeout=30) as http:
            for persona, path in paths.items():
                async with http.stream("POST", "/predictions/fleet", json={"persona": persona, "message": "hi"},
                                       headers={"Authorization": "Bearer cluster-secret"}) as response:
                    assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
                    assert response.headers["content-type"].startswith("application/x-ndjson")
                    lines = response.aiter_lines()
                    first = [parse_event(await anext(lines)) for _ in range(3)]  # long before the reply is done
                assert [event.tokens for event in first] == [1, 2, 3], persona
                await asyncio.wait_for(closed[path].wait(), 5)  # the client left: so did the front, upstream
            assert seen["/predictions/fleet-t5"] == ("Bearer local-inference", None)
            assert seen["/predictions/fleet"] == ("Bearer cluster-secret", "/bases/causal")  # served there, not forwarded again
    finally:
        stopping.set()
        await serving
        await upstream.cleanup()


async def test_a_client_leaving_after_its_final_event_is_no_error(tmp_path, caplog):
    """A client may close its connection as soon as it has the final event, before the stream's
    end arrives: the front drops the stream quietly and keeps serving, no error logged."""

    async def fleet(request: web.Request) -> web.StreamResponse:
        """A one-event reply whose end comes a moment after its final event."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        final = {"reply": "да", "persona": PERSONA, "model_version": "1", "tokens": 1}
        await response.write(json.dumps(final).encode() + b"\n")
        await asyncio.sleep(0.5)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    body, headers = {"persona": PERSONA, "message": "hi"}, {"Authorization": "Bearer bot-token"}
    async with front_before(fleet, tmp_path, "bot-token", backend_timeout=30) as front_port:
        with caplog.at_level(logging.INFO):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front_port}", timeout=30) as http:
                async with http.stream("POST", "/predictions/fleet", json=body, headers=headers) as response:
                    final = parse_event(await anext(response.aiter_lines()))
                await asyncio.sleep(1.0)  # the stream's end reaches the front after its client left
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front_port}", timeout=30) as http:
                again = await http.post("/predictions/fleet", json=body, headers=headers)
    assert final.reply == "да" and again.status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
