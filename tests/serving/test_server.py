"""The fleet handler inside a real TorchServe: replies, per-request errors in a batch, tokens, metrics."""

import asyncio
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from personafleet.client import InferenceClient, InferenceRejected, TokenSource
from personafleet.inference import GenerationOptions, InferenceRequest, InferenceResponse, final_event
from tests.fixtures.torchserve import hostile_model

pytestmark = pytest.mark.slow


async def test_valid_request_gets_a_reply(torchserve):
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        request = InferenceRequest(
            context=[{"role": "user", "text": "привет"}, {"role": "persona", "text": "здорово"}],
            message="как деплой?", generation=GenerationOptions(max_new_tokens=8, do_sample=False),
        )
        response = await client.reply(torchserve.persona, request)
    assert isinstance(response, InferenceResponse)
    assert (response.persona, response.model_version) == (torchserve.persona, "1")
    assert 1 <= response.tokens <= 8


async def test_a_batch_of_valid_and_invalid_requests_answers_each_on_its_own(torchserve):
    """Sent together, the requests land in one batch (batchSize 8, maxBatchDelay 100 ms); unknown
    personas and versions are a 404 for that request alone."""
    persona = torchserve.persona
    bodies = [
        json.dumps({"persona": persona, "message": "первый", "generation": {"max_new_tokens": 4}}, ensure_ascii=False).encode(),
        b"{not json",
        json.dumps({"persona": persona, "context": []}).encode(),
        json.dumps({"persona": persona, "message": "второй", "generation": {"max_new_tokens": 6}}, ensure_ascii=False).encode(),
        json.dumps({"persona": persona, "message": "x" * 4001}).encode(),
        json.dumps({"message": "третий", "persona": "another-persona"}).encode(),
        json.dumps({"message": "четвёртый", "persona": persona, "version": 7}).encode(),
        json.dumps({"message": "пятый"}).encode(),
    ]
    headers = TokenSource(token_file=torchserve.key_file).headers()
    async with httpx.AsyncClient(base_url=torchserve.inference_url, timeout=60) as http:
        responses = await asyncio.gather(*(http.post("/predictions/fleet", content=body, headers=headers) for body in bodies))
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 400, 400, 200, 413, 404, 404, 400]
    errors = [final_event(r.text).error if r.status_code != 200 else None for r in responses]  # type: ignore[union-attr]
    assert errors[1:3] == ["invalid_json", "missing_field"]
    assert errors[4:] == ["too_large", "unknown_persona", "unknown_version", "missing_field"]
    refused, answered = [r for r in responses if r.status_code != 200], [responses[0], responses[3]]
    assert all(r.headers["content-type"].startswith("application/json") for r in refused)
    assert all(r.headers["content-type"].startswith("application/x-ndjson") for r in answered)
    assert final_event(responses[3].text).tokens <= 6  # type: ignore[union-attr]
    # Cyrillic in replies is sent as UTF-8, not as \\u escapes.
    assert "\\u" not in responses[0].text

    metrics = httpx.get(torchserve.metrics_url, timeout=10).text
    batch_count = _sample(metrics, "persona_handler_batch_size_count")
    batch_sum = _sample(metrics, "persona_handler_batch_size_sum")
    assert batch_sum > batch_count, "no handler call ever received more than one request"


async def test_hostile_requests_in_a_batch_fail_alone_and_rotate_no_key(torchserve):
    """A body nested past Python's recursion limit, an explanation request (BaseHandler would send
    the whole batch down its explain path) and a persona that echoes TorchServe's auth phrase."""
    headers = TokenSource(token_file=torchserve.key_file).headers()
    key_before = torchserve.key_file.read_text()
    valid = {"persona": torchserve.persona, "message": "привет", "generation": {"max_new_tokens": 4}}
    async with httpx.AsyncClient(base_url=torchserve.inference_url, timeout=60) as http:
        responses = await asyncio.gather(
            http.post("/explanations/fleet", json=valid, headers=headers),
            http.post("/predictions/fleet", content=b"[" * 100_000 + b"]" * 100_000, headers=headers),
            http.post("/predictions/fleet", json=valid, headers=headers),
            http.post("/predictions/fleet", json=valid, headers=headers),
        )
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    assert final_event(responses[1].text).error == "invalid_json"  # type: ignore[union-attr]
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        with pytest.raises(InferenceRejected) as rejected:
            await client.reply("Token Authorization failed", InferenceRequest(message="hi"))
        assert rejected.value.error == "unknown_persona"
        await client.reply(torchserve.persona, InferenceRequest(message="hi", generation={"max_new_tokens": 2}))
    assert torchserve.key_file.read_text() == key_before  # nobody asked TorchServe for a new key


async def test_requests_without_a_valid_token_are_refused(torchserve):
    async with httpx.AsyncClient(base_url=torchserve.inference_url, timeout=30) as http:
        anonymous = await http.post("/predictions/fleet", json={"persona": torchserve.persona, "message": "hi"})
        ping = await http.get("/ping")
    assert anonymous.status_code == 400 and "Token Authorization failed" in anonymous.text
    assert ping.status_code == 400
    async with InferenceClient(torchserve.inference_url, token="wrong-key", retries=0) as client:
        with pytest.raises(InferenceRejected) as refused:
            await client.reply(torchserve.persona, InferenceRequest(message="hi"))
    assert refused.value.status == 400


async def test_no_model_can_be_registered_after_start(torchserve, tmp_path):
    """TorchServe 0.12 registers an absolute path to an unpacked folder (MAR-INF/MANIFEST.json + a
    handler) without checking `allowed_urls`, and runs its handler. The fleet (and asr) are loaded
    at start and the model API is off: with the management key, from any source, nothing registers."""
    folder, marker = hostile_model(tmp_path)
    headers = TokenSource(token_file=torchserve.key_file, kind="management").headers()
    async with httpx.AsyncClient(base_url=torchserve.management_url, timeout=120) as http:
        attempts = [await http.post("/models", params={"url": url, "initial_workers": "1", "synchronous": "true"},
                                    headers=headers)
                    for url in (str(folder), f"file://{folder}", "fleet.mar")]
        models = (await http.get("/models", headers=headers)).json()["models"]
    assert [r.status_code for r in attempts] == [405, 405, 405], [r.text for r in attempts]
    assert not marker.exists()
    assert [m["modelName"] for m in models] == ["fleet"]


async def test_clients_get_an_inference_only_key_that_lasts_as_long_as_the_server(torchserve):
    """Without the auth front, `persona serve` hands clients TorchServe's inference key alone: it
    cannot ask for a management key (that takes the key file's API key) nor reach the management
    API, and it does not expire under a client that cannot renew it."""
    token_file = torchserve.options.inference_token_file
    keys = json.loads(torchserve.key_file.read_text())
    token = token_file.read_text().strip()
    assert token == keys["inference"]["key"] and token not in (keys["management"]["key"], keys["API"]["key"])
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert json.loads((torchserve.workdir / "endpoints.json").read_text())["inference_token"] == str(token_file)
    expires = datetime.fromisoformat(keys["inference"]["expiration time"].replace("Z", "+00:00"))
    assert expires > datetime.now(timezone.utc) + timedelta(days=365)
    async with InferenceClient(torchserve.inference_url, token_file=token_file) as client:
        response = await client.reply(torchserve.persona, InferenceRequest(message="hi", generation={"max_new_tokens": 2}))
    assert response.persona == torchserve.persona
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=torchserve.management_url, timeout=30) as http:
        minted = await http.post("/token", params={"type": "management"}, headers=bearer)
        listed = await http.get("/models", headers=bearer)
    assert minted.status_code == listed.status_code == 400
    assert "InvalidKeyException" in minted.text and "InvalidKeyException" in listed.text
    assert json.loads(torchserve.key_file.read_text()) == keys  # no key was minted


async def test_custom_metrics_are_exported_after_traffic(torchserve):
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        await client.reply(torchserve.persona, InferenceRequest(message="метрики", generation={"max_new_tokens": 3}))
    async with httpx.AsyncClient(base_url=torchserve.inference_url, timeout=30) as http:
        await http.post("/predictions/fleet", content=b"oops",
                        headers=TokenSource(token_file=torchserve.key_file).headers())
    metrics = httpx.get(torchserve.metrics_url, timeout=10).text  # no token needed
    assert "# TYPE persona_handler_generation_seconds histogram" in metrics
    persona = f'persona="{torchserve.persona}",version="1"'
    assert _sample(metrics, "persona_handler_generation_seconds_bucket", 'model_name="fleet"', persona) > 0
    assert _sample(metrics, "persona_handler_requests_total", persona) >= 1
    # The series arithmetic of docs/serving.md: a (persona, version) pair costs 19 series, 17 of them the histogram's.
    pair = [line for line in metrics.splitlines() if persona in line and not line.startswith("#")]
    assert sum(line.startswith("persona_handler_generation_seconds_") for line in pair) == 17
    assert sum(line.startswith(("persona_handler_requests_total{", "persona_handler_generated_tokens_total{")) for line in pair) == 2
    for name in ("persona_handler_slots_in_use", "persona_handler_host_adapters", "persona_handler_adapter_loads_total",
                 "persona_handler_adapter_evictions_total", "persona_handler_slot_load_seconds",
                 "persona_handler_adapters_per_batch", "persona_handler_personas_per_batch"):
        assert f"# TYPE {name} " in metrics
    assert 1 <= _sample(metrics, "persona_handler_slots_in_use") <= 2
    assert _sample(metrics, "persona_handler_slot_load_seconds_count", 'tier="disk"') >= 1
    assert _sample(metrics, "persona_handler_generated_tokens_total", persona) > 0
    assert _sample(metrics, "persona_handler_errors_total", 'persona="other",version="none"', 'reason="invalid_json"') >= 1
    assert "ts_inference_requests_total" in metrics


def _sample(metrics: str, name: str, *required: str) -> float:
    """Sum of a metric's samples (over label sets) whose labels contain every `required` text."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(text in line for text in required):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_speech_model_that_cannot_load_fails_by_hand_and_is_left_out_in_a_pod(tiny_base, tmp_path, monkeypatch):
    """`asr` is loaded at start (it cannot be registered again later): a worker that dies while
    loading - a hub checkpoint with the hub unreachable - fails `persona serve` by hand, and a pod
    (`--foreground`) serves the personas without it while TorchServe retries with back-off."""
    from persona_serving.asr_package import build_asr_archive
    from persona_serving.server import front_timeout, start, startup_models, stop, wait_until_served
    from personafleet.errors import PersonaError
    from tests.fixtures.torchserve import serve_options

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the workers inherit it: the download fails at once
    store = tmp_path / "store"
    build_asr_archive("no-such-org/no-such-whisper", store / "asr")
    options = serve_options(store, tiny_base, tmp_path / "serve")
    models = startup_models(options, asr_required=False)
    assert models == ["fleet", "asr"]
    pid = start(options, models)
    try:
        served = asyncio.run(wait_until_served(options, pid, models, asr_required=False))
        assert list(served) == ["fleet"]
        # the auth front waits for TorchServe longer than TorchServe's own response timeout (60 s here)
        assert front_timeout(served) == 2 * served["fleet"]["responseTimeout"] == 120
        with pytest.raises(PersonaError, match="cannot load the asr model: the asr model's worker died while loading"):
            asyncio.run(wait_until_served(options, pid, models))
        assert httpx.get(f"{options.inference_url}/ping", headers=TokenSource(
            token_file=options.inference_token_file).headers(), timeout=10).status_code == 200
    finally:
        stop(options.workdir)
