"""The container entrypoint (`persona serve --foreground`) with the auth front, as in Kubernetes:
Secret tokens outside, TorchServe's own short-lived keys inside, the fleet registered at start."""

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from persona_serving.management import ManagementClient, ManagementError
from personafleet.client import InferenceClient, InferenceRejected
from personafleet.inference import InferenceRequest
from personafleet.routing import update_routing
from tests.fixtures.torchserve import PERSONA, free_port, publish

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
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    command = [
        sys.executable, "-m", "personafleet.cli", "serve", "--foreground", "--model-store", str(store),
        "--base", str(tiny_base), "--workdir", str(root / "serve"),
        "--inference-port", str(ports["inference"]), "--management-port", str(ports["management"]),
        "--metrics-port", str(ports["metrics"]), "--backend-ports", str(free_port()), str(free_port()),
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
               "secrets": secrets, "workdir": root / "serve", "store": store}
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


def test_sigterm_stops_torchserve_and_exits_cleanly(pod):
    pod["process"].send_signal(signal.SIGTERM)
    assert pod["process"].wait(90) == 0
    assert not (pod["workdir"] / "torchserve.pid").exists()
    assert not (pod["workdir"] / "key_file.json").exists()
