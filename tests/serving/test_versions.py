"""A second version registered and made the default while clients keep talking: no failures."""

import asyncio
from pathlib import Path

import pytest

from persona_serving.management import ManagementClient
from persona_serving.store import stage
from personafleet.client import InferenceClient
from personafleet.inference import InferenceRequest
from tests.fixtures.torchserve import build_mar

pytestmark = pytest.mark.slow

REQUEST = InferenceRequest(message="что там с релизом?", generation={"max_new_tokens": 4, "do_sample": False})


async def test_version_2_becomes_default_under_load_without_failed_requests(torchserve, tiny_run: Path):
    build_mar(tiny_run, torchserve.persona, "2", torchserve.model_store)
    answered: list[str] = []
    failures: list[BaseException] = []
    switched = asyncio.Event()

    async def client_loop() -> None:
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, retries=0) as client:
            after_switch = 0
            while after_switch < 3:
                try:
                    answered.append((await client.reply(torchserve.persona, REQUEST)).model_version)
                except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                    failures.append(exc)
                after_switch += switched.is_set()

    async with ManagementClient(torchserve.management_url, token_file=torchserve.key_file) as management:
        load = [asyncio.create_task(client_loop()) for _ in range(4)]
        try:
            await asyncio.sleep(0.5)
            url = stage(torchserve.model_store, f"{torchserve.persona}/v2/{torchserve.persona}.mar", torchserve.options.links)
            await management.register(url, initial_workers=1, synchronous=True)
            await management.set_default(torchserve.persona, "2")
            switched.set()
            await asyncio.wait_for(asyncio.gather(*load), timeout=120)
            described = await management.describe(torchserve.persona)
        finally:
            switched.set()
            await management.set_default(torchserve.persona, "1")
            await management.unregister(torchserve.persona, "2")

    assert failures == []
    assert {"1", "2"} <= set(answered)
    assert answered[-1] == "2"
    assert {d["modelVersion"]: d["isDefault"] for d in described} == {"1": False, "2": True}
