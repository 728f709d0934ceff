"""Several bases in one `persona serve` (issue 22): a T5 fleet and a causal fleet in one real
TorchServe, a front that sends each request to the fleet of its persona's base, and each base
failing alone."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from persona_serving.bases import Fleet, fleet_names
from persona_serving.management import ManagementClient
from persona_serving.server import FRONT_PID_FILE, ServeOptions, serve_background, stop, with_bases
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable
from personafleet.inference import InferenceRequest, InferenceResponse, StreamPreview
from personafleet.routing import read_routing, update_routing
from tests.fixtures.causal_model import CAUSAL_PERSONA
from tests.fixtures.torchserve import OTHER_PERSONA, PERSONA, free_port, publish, serve_options

pytestmark = pytest.mark.slow

REQUEST = InferenceRequest(message="что там с деплоем?", generation={"max_new_tokens": 4, "do_sample": False})


@pytest.fixture(scope="module")
def two_bases(tiny_run: Path, other_run: Path, causal_run: Path, causal_other_run: Path, tiny_base: Path,
              causal_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeOptions]:
    """devops-dude and pm-life on the tiny T5, causal-dude (v1, v2) on the tiny Llama; no --base:
    `persona serve` serves every base the routing table records (set from each version.json)."""
    root = tmp_path_factory.mktemp("bases")
    store = root / "store"
    publish(tiny_run, PERSONA, 1, store)
    publish(other_run, OTHER_PERSONA, 1, store)
    publish(causal_run, CAUSAL_PERSONA, 1, store)
    publish(causal_other_run, CAUSAL_PERSONA, 2, store)
    # Listed without bases (a table from before issue 22): `persona serve` records them.
    update_routing(store, lambda t: (t.add(CAUSAL_PERSONA, 1, serve=False), t.add(CAUSAL_PERSONA, 2, serve=True)))
    options = serve_options(store, tiny_base, root / "serve", bases=[])
    serve_background(options)
    try:
        yield with_bases(options, read_routing(store))  # the bases it serves, in its order
    finally:
        stop(options.workdir)
        assert not (options.workdir / FRONT_PID_FILE).exists()


def test_every_base_the_routing_table_records_gets_its_own_fleet(two_bases: ServeOptions, tiny_base: Path,
                                                                  causal_base: Path):
    table = read_routing(two_bases.model_store)
    assert table.base_of(PERSONA, 1) == str(tiny_base) and table.base_of(CAUSAL_PERSONA, 2) == str(causal_base)
    assert table.resolve(CAUSAL_PERSONA) == 2 and table.base_of(CAUSAL_PERSONA, 1) == str(causal_base)

    async def models() -> list[str]:
        async with ManagementClient(two_bases.management_url, token_file=two_bases.key_file) as management:
            return sorted(m["modelName"] for m in await management.list_models())

    assert sorted(two_bases.bases) == sorted([str(tiny_base), str(causal_base)])
    assert asyncio.run(models()) == sorted(fleet_names(two_bases.bases))


async def test_one_endpoint_answers_each_persona_from_the_fleet_of_its_base(two_bases: ServeOptions):
    """The client asks `/predictions/fleet` as always; a causal persona sent to the T5 fleet could
    not load its adapter (503), so a 200 from each proves the routing. Concurrent requests too."""
    asks = [(PERSONA, None), (CAUSAL_PERSONA, None), (OTHER_PERSONA, None), (CAUSAL_PERSONA, 1)] * 2
    async with InferenceClient(two_bases.inference_url, token_file=two_bases.inference_token_file, retries=0) as client:
        answers = await asyncio.gather(*(client.reply(p, REQUEST, version=v) for p, v in asks))
    assert [(a.persona, a.model_version) for a in answers] == [
        (PERSONA, "1"), (CAUSAL_PERSONA, "2"), (OTHER_PERSONA, "1"), (CAUSAL_PERSONA, "1")] * 2
    assert all(a.tokens > 0 for a in answers)


async def test_replies_of_both_bases_stream_through_the_one_endpoint(two_bases: ServeOptions):
    """Each fleet decodes step by step (the T5 one and the causal one alike) and the routing front
    relays its events as they come: previews, then the whole reply, which `reply()` returns too."""
    greedy = InferenceRequest(message="что там с деплоем?", generation={"max_new_tokens": 6, "do_sample": False})
    async with InferenceClient(two_bases.inference_url, token_file=two_bases.inference_token_file, retries=0) as client:
        for persona in (PERSONA, CAUSAL_PERSONA):
            *previews, final = [event async for event in client.stream(persona, greedy)]
            assert previews and all(isinstance(p, StreamPreview) for p in previews), persona
            assert [p.tokens for p in previews] == list(range(1, len(previews) + 1))
            assert isinstance(final, InferenceResponse) and final.persona == persona and final.tokens == len(previews) + 1
            assert final.reply.startswith("".join(p.delta for p in previews))
            assert (await client.reply(persona, greedy)).reply == final.reply


async def test_a_version_published_for_a_base_no_fleet_serves_is_a_clear_503(two_bases: ServeOptions):
    update_routing(two_bases.model_store, lambda t: t.add(OTHER_PERSONA, 7, serve=False, base="ai-forever/FRED-T5-large"))
    try:
        async with InferenceClient(two_bases.inference_url, token_file=two_bases.inference_token_file, retries=0) as client:
            with pytest.raises(InferenceUnavailable, match="base_not_served.*pm-life v7 was published for base "
                                                          "ai-forever/FRED-T5-large, which no fleet here serves"):
                await client.reply(OTHER_PERSONA, REQUEST, version=7)
            assert (await client.reply(OTHER_PERSONA, REQUEST)).model_version == "1"
            with pytest.raises(InferenceRejected, match="no persona 'nobody'"):  # unknown: the first fleet says so
                await client.reply("nobody", REQUEST)
    finally:
        update_routing(two_bases.model_store, lambda t: t.withdraw(OTHER_PERSONA, 7))


async def test_a_base_whose_fleet_is_down_fails_its_requests_only(two_bases: ServeOptions, tiny_base: Path,
                                                                 causal_base: Path):
    """A front whose causal fleet is not loaded in its TorchServe (the model API is off: a fleet that
    failed to load is simply not there): that base's requests are 503s, the other base answers."""
    from persona_serving.bases import BaseRouter
    from persona_serving.front import AuthFront

    model = dict(zip(two_bases.bases, fleet_names(two_bases.bases)))
    front = AuthFront(inference_token_file=two_bases.key_file, management_token_file=None, key_file=two_bases.key_file,
                      inference_backend=two_bases.torchserve_url, management_backend=two_bases.management_url,
                      backend_timeout=120, router=BaseRouter(two_bases.model_store, [
                          Fleet(str(tiny_base), model[str(tiny_base)]), Fleet(str(causal_base), "fleet-not-loaded")]))
    port, stopping = free_port(), asyncio.Event()
    serving = asyncio.create_task(front.serve("127.0.0.1", port, None, stopping))
    try:
        await _listening([f"http://127.0.0.1:{port}"])
        async with InferenceClient(f"http://127.0.0.1:{port}", token_file=two_bases.inference_token_file,
                                   retries=0) as client:
            with pytest.raises(InferenceUnavailable, match=f"fleet_unavailable.*base {causal_base} is down"):
                await client.reply(CAUSAL_PERSONA, REQUEST)
            assert (await client.reply(PERSONA, REQUEST)).persona == PERSONA
    finally:
        stopping.set()
        await serving


def test_persona_chat_talks_to_both_bases_through_the_local_server(two_bases: ServeOptions):
    for persona in (PERSONA, CAUSAL_PERSONA):
        result = subprocess.run([sys.executable, "-m", "persona_cli", "chat", "--persona", persona,
                                 "--workdir", str(two_bases.workdir)],
                                input="привет\n", capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 1


async def test_in_a_cluster_a_front_forwards_another_bases_persona_to_that_bases_service(
        two_bases: ServeOptions, tiny_base: Path, causal_base: Path, tmp_path: Path):
    """Two pods' fronts (one per base) with the cluster's Secret token; each forwards the other
    base's personas to the other's Service, which serves them itself. One pod gone: only its
    base's requests fail."""
    from persona_serving.bases import BaseRouter
    from persona_serving.front import AuthFront

    token = tmp_path / "inference-token"
    token.write_text("cluster-secret\n")
    model = dict(zip(two_bases.bases, fleet_names(two_bases.bases)))  # each base's model in the shared TorchServe
    ports = {"t5": free_port(), "causal": free_port()}
    urls = {pod: f"http://127.0.0.1:{port}" for pod, port in ports.items()}
    pods = {
        "t5": [Fleet(str(tiny_base), model[str(tiny_base)]), Fleet(str(causal_base), url=urls["causal"])],
        "causal": [Fleet(str(causal_base), model[str(causal_base)]), Fleet(str(tiny_base), url=urls["t5"])],
    }
    stopping = {pod: asyncio.Event() for pod in pods}

    def front(pod: str) -> asyncio.Task:
        server = AuthFront(inference_token_file=token, management_token_file=None, key_file=two_bases.key_file,
                           inference_backend=two_bases.torchserve_url, management_backend=two_bases.management_url,
                           backend_timeout=120, router=BaseRouter(two_bases.model_store, pods[pod]))
        return asyncio.create_task(server.serve("127.0.0.1", ports[pod], None, stopping[pod]))

    running = {pod: front(pod) for pod in pods}
    try:
        await _listening(urls.values())
        async with InferenceClient(urls["t5"], token="cluster-secret", retries=0) as client:
            answers = await asyncio.gather(client.reply(PERSONA, REQUEST), client.reply(CAUSAL_PERSONA, REQUEST))
            assert [a.persona for a in answers] == [PERSONA, CAUSAL_PERSONA]
            forwarded = [event async for event in client.stream(CAUSAL_PERSONA, REQUEST)]  # through both fronts
            assert len(forwarded) >= 2 and isinstance(forwarded[-1], InferenceResponse)
            assert all(isinstance(event, StreamPreview) for event in forwarded[:-1])
            stopping["causal"].set()
            await running["causal"]
            with pytest.raises(InferenceUnavailable, match=f"fleet_unavailable.*base {causal_base} is not answering"):
                await client.reply(CAUSAL_PERSONA, REQUEST)
            assert (await client.reply(PERSONA, REQUEST)).persona == PERSONA
        async with httpx.AsyncClient() as http:  # a forwarded request is never forwarded again
            response = await http.post(f"{urls['t5']}/predictions/fleet", json={"persona": PERSONA, "message": "hi"},
                                       headers={"Authorization": "Bearer cluster-secret", "X-Persona-Fleet": str(causal_base)})
        assert response.status_code == 503 and response.json()["error"] == "base_not_served"
    finally:
        for pod in pods:
            stopping[pod].set()
        await asyncio.gather(*running.values(), return_exceptions=True)


async def _listening(urls) -> None:
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient() as http:
        for url in urls:
            while True:
                try:
                    await http.get(f"{url}/ping")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)


def test_fleet_names_are_unique_and_torchserve_model_names():
    assert fleet_names(["ai-forever/FRED-T5-large"]) == ["fleet"]
    assert fleet_names(["ai-forever/FRED-T5-large", "/models/ruGPT3_small/", "/x/base", "/y/base"]) == [
        "fleet-fred-t5-large", "fleet-rugpt3-small", "fleet-base", "fleet-base-2"]
