"""InferenceClient: retries with backoff, error mapping, and surviving TorchServe key changes."""

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from persona_serving.management import ManagementClient
from persona_serving.server import ServeOptions, hand_out_inference_key, start, stop, wait_until_up
from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable, TokenSource
from personafleet.inference import InferenceRequest
from tests.fixtures.torchserve import free_port

REQUEST = InferenceRequest(message="привет", generation={"max_new_tokens": 3})


async def flaky_server(failures: int, status: int = 503):
    """A server that fails `failures` times, then answers; records when each call came."""
    calls: list[float] = []

    async def predict(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        assert request.headers["Authorization"] == "Bearer plain-token"
        assert request.match_info["name"] == "fleet" and (await request.json())["persona"] == "devops-dude"
        if len(calls) <= failures:
            return web.json_response({"error": "busy", "detail": "try later"}, status=status)
        return web.json_response({"reply": "ок", "persona": "devops-dude", "model_version": "1", "tokens": 1})

    app = web.Application()
    app.router.add_post("/predictions/{name}", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", calls


async def test_5xx_is_retried_with_backoff(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("plain-token\n")  # a mounted Secret: the stripped content is the token
    runner, url, calls = await flaky_server(failures=2)
    try:
        async with InferenceClient(url, token_file=token, retries=2, backoff=0.2) as client:
            response = await client.reply("devops-dude", REQUEST)
    finally:
        await runner.cleanup()
    assert response.reply == "ок" and len(calls) == 3
    assert calls[1] - calls[0] >= 0.2 and calls[2] - calls[1] >= 0.4


async def test_4xx_is_not_retried(tmp_path: Path):
    runner, url, calls = await flaky_server(failures=5, status=422)
    try:
        async with InferenceClient(url, token="plain-token", retries=3, backoff=0.01) as client:
            with pytest.raises(InferenceRejected) as refused:
                await client.reply("devops-dude", REQUEST)
    finally:
        await runner.cleanup()
    assert (refused.value.status, refused.value.error, refused.value.detail) == (422, "busy", "try later")
    assert len(calls) == 1


async def test_unreachable_server_is_unavailable_after_retries():
    async with InferenceClient(f"http://127.0.0.1:{free_port()}", token="x", retries=1, backoff=0.01) as client:
        with pytest.raises(InferenceUnavailable, match="after 2 attempts"):
            await client.reply("devops-dude", REQUEST)


@pytest.mark.slow
async def test_client_rereads_a_rotated_key(torchserve):
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        await client.reply(torchserve.persona, REQUEST)
        old = client.tokens.token()
        api_key = json.loads(torchserve.key_file.read_text())["API"]["key"]
        rotated = httpx.post(f"{torchserve.management_url}/token", params={"type": "inference"},
                             headers={"Authorization": f"Bearer {api_key}"})
        assert rotated.status_code == 200
        response = await client.reply(torchserve.persona, REQUEST)
    hand_out_inference_key(torchserve.options)  # the session's other clients hold the inference token
    assert response.model_version == "1"
    assert client.tokens.token() != old


@pytest.mark.slow
async def test_client_renews_an_expired_key(tiny_base: Path, tmp_path: Path):
    """Keys that expire after 3 s: the key file's API key gets a fresh one from the server."""
    store = tmp_path / "store"
    store.mkdir()
    options = ServeOptions(
        model_store=store, bases=[str(tiny_base)], workdir=tmp_path / "serve", token_expiration_min=0.05,
        inference_port=free_port(), management_port=free_port(), metrics_port=free_port(),
        grpc_ports=(free_port(), free_port()),
    )
    pid = start(options, [])
    try:
        await wait_until_up(options, pid)
        expired = TokenSource(token_file=options.key_file, kind="management").token()
        await asyncio.sleep(4)
        async with ManagementClient(options.management_url, token_file=options.key_file) as management:
            assert await management.list_models() == []
            assert management.tokens.token() != expired
    finally:
        stop(options.workdir)
