"""Reply streams from a real TorchServe: chunked NDJSON events ending in the whole reply, and a
worker that dies mid-stream leaving its client with a clear error (not a truncated reply)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from persona_serving.server import running_pid, serve_background, stop
from personafleet.client import InferenceClient, StreamInterrupted, TokenSource
from personafleet.inference import InferenceRequest, InferenceResponse, StreamPreview, parse_event
from tests.fixtures.torchserve import serve_options

pytestmark = pytest.mark.slow
GREEDY = {"max_new_tokens": 16, "do_sample": False}


async def test_a_reply_arrives_as_chunked_events_ending_in_the_whole_reply(torchserve):
    body = {"persona": torchserve.persona, "message": "как там деплой?", "generation": GREEDY}
    headers = TokenSource(token_file=torchserve.key_file).headers()
    async with httpx.AsyncClient(base_url=torchserve.inference_url, timeout=60) as http:
        async with http.stream("POST", "/predictions/fleet", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            assert response.headers["content-type"].startswith("application/x-ndjson")
            events = [parse_event(line) async for line in response.aiter_lines() if line.strip()]
    *previews, final = events
    assert previews and all(isinstance(p, StreamPreview) for p in previews)
    assert previews[0].model_version == "1" and [p.tokens for p in previews] == sorted(p.tokens for p in previews)
    assert isinstance(final, InferenceResponse) and final.reply.startswith("".join(p.delta for p in previews))
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        whole = await client.reply(torchserve.persona, InferenceRequest.model_validate(body))
    assert whole.reply == final.reply  # the whole-reply call is the stream's final event


def fleet_worker(workdir: Path) -> psutil.Process:
    jvm = psutil.Process(running_pid(workdir))
    [worker] = [p for p in jvm.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]
    return worker


async def test_a_worker_dying_mid_stream_is_a_clear_error_and_the_next_reply_works(fleet_store, tiny_base, tmp_path):
    options = serve_options(fleet_store, tiny_base, tmp_path / "serve")
    await asyncio.to_thread(serve_background, options)  # it runs an event loop of its own
    try:
        async with InferenceClient(options.inference_url, token_file=options.key_file, timeout=60) as client:
            stream = client.stream("devops-dude", InferenceRequest(message="расскажи про релиз", generation=GREEDY))
            first = await anext(stream)
            assert isinstance(first, StreamPreview)
            worker = fleet_worker(options.workdir)
            os.kill(worker.pid, signal.SIGSTOP)  # frozen mid-reply: no further step can finish it
            os.kill(worker.pid, signal.SIGKILL)
            with pytest.raises(StreamInterrupted, match="broke off|without its final event"):
                async for event in stream:
                    assert not isinstance(event, InferenceResponse), "a reply cannot finish on a killed worker"
            # TorchServe starts a new worker; the next request is answered in full.
            again = await client.reply("devops-dude", InferenceRequest(message="ну что?", generation=GREEDY))
        assert again.persona == "devops-dude" and again.tokens >= 1
    finally:
        await asyncio.to_thread(stop, options.workdir)
