"""The fleet in a real TorchServe: mixed-persona batches, the adapter LRU, routing switches under
load, faulty versions and tables - each failing alone while the worker keeps serving."""

import asyncio
import shutil
import subprocess
import sys

import httpx
import pytest

from personafleet.client import InferenceClient, InferenceRejected, InferenceUnavailable
from personafleet.inference import InferenceRequest
from persona_serving.server import route_unlisted
from personafleet.routing import ROUTING_FILE, RoutingTable, conversation_key, read_routing, update_routing, write_routing
from personafleet.store import ADAPTER_DIR
from tests.fixtures.torchserve import OTHER_PERSONA, PERSONA, initial_routing, publish
from tests.serving.test_server import _sample

pytestmark = pytest.mark.slow

GREEDY = {"max_new_tokens": 8, "do_sample": False}
MESSAGES = ["что там с деплоем?", "как дела у команды?"]


def request(message: str) -> InferenceRequest:
    return InferenceRequest(message=message, generation=GREEDY)


def metrics(torchserve) -> str:
    return httpx.get(torchserve.metrics_url, timeout=10).text


async def test_a_mixed_persona_batch_answers_each_row_with_its_own_adapter(torchserve):
    """Sent together, rows of both personas share one `generate`; each reply equals what that
    persona answers alone (greedy), and the two personas answer differently."""
    before = _sample(metrics(torchserve), "persona_handler_personas_per_batch_sum")
    asks = [(persona, message) for message in MESSAGES for persona in (PERSONA, OTHER_PERSONA)]
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        together = await asyncio.gather(*(client.reply(persona, request(message)) for persona, message in asks))
        alone = [await client.reply(persona, request(message)) for persona, message in asks]
    assert [r.persona for r in together] == [persona for persona, _ in asks]
    assert [r.reply for r in together] == [r.reply for r in alone]
    assert [r.reply for r in alone[0::2]] != [r.reply for r in alone[1::2]], "the adapters must answer differently"
    sample = metrics(torchserve)
    batches = _sample(sample, "persona_handler_personas_per_batch_count")
    assert _sample(sample, "persona_handler_personas_per_batch_sum") - before > len(asks), \
        "no batch mixed two personas"
    assert batches > 0
    assert _sample(sample, "persona_handler_adapters_per_batch_sum") > _sample(sample, "persona_handler_adapters_per_batch_count"), \
        "no generate mixed two adapters"


async def test_the_least_recently_used_adapter_is_evicted_and_reloaded(torchserve):
    """Two adapters fit a worker: a third version evicts the oldest, which is loaded again later."""
    before = metrics(torchserve)
    async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
        for persona, version in [(PERSONA, 1), (OTHER_PERSONA, 1), (PERSONA, 2), (PERSONA, 1), (OTHER_PERSONA, 1)]:
            response = await client.reply(persona, request("привет"), version=version)
            assert (response.persona, response.model_version) == (persona, str(version))
    after = metrics(torchserve)
    evicted = _sample(after, "persona_handler_adapter_evictions_total") - _sample(before, "persona_handler_adapter_evictions_total")
    loaded = _sample(after, "persona_handler_adapter_loads_total") - _sample(before, "persona_handler_adapter_loads_total")
    assert evicted >= 2 and loaded >= 3  # v2 evicts one; the evicted ones come back
    assert _sample(after, "persona_handler_slots_in_use") == 2


async def test_a_routing_switch_under_load_fails_no_request(torchserve):
    """`persona switch` while four clients keep asking: every request answered, v1 then v2."""
    answered: list[str] = []
    failures: list[BaseException] = []
    switched = asyncio.Event()

    async def client_loop() -> None:
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, retries=0) as client:
            after_switch = 0
            while after_switch < 3:
                try:
                    answered.append((await client.reply(PERSONA, request("что там с релизом?"))).model_version)
                except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                    failures.append(exc)
                after_switch += switched.is_set()

    load = [asyncio.create_task(client_loop()) for _ in range(4)]
    try:
        await asyncio.sleep(1.0)
        switch = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "persona_cli", "switch", "--model-store", str(torchserve.model_store),
             "--persona", PERSONA, "--version", "2"], capture_output=True, text=True, timeout=60,
        )
        assert switch.returncode == 0, switch.stderr
        assert switch.stdout.strip() == f"{PERSONA} serves v2 (versions: 1, 2)"
        await asyncio.sleep(1.0)  # the switch is noticed within a batch
        switched.set()
        await asyncio.wait_for(asyncio.gather(*load), timeout=120)
    finally:
        switched.set()
        update_routing(torchserve.model_store, initial_routing)
    assert failures == []
    assert answered[0] == "1" and answered[-4:] == ["2"] * 4


def test_switch_refuses_a_version_that_is_not_published(torchserve):
    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "switch", "--model-store", str(torchserve.model_store),
         "--persona", PERSONA, "--version", "9"], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and result.stderr.startswith("persona: error: ") and "no version.json" in result.stderr


async def test_a_local_canary_answers_every_turn_of_a_conversation_with_one_version(torchserve):
    """`persona switch --weight 50`: conversations split between v1 and v2, each keeps its version;
    requests without a conversation key, and pinned ones, are answered as before."""
    def switch(*weight: str) -> str:
        result = subprocess.run([sys.executable, "-m", "persona_cli", "switch", "--model-store",
                                 str(torchserve.model_store), "--persona", PERSONA, "--version", "2", *weight],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    try:
        assert switch("--weight", "50") == f"{PERSONA} serves v1 (versions: 1, 2); conversations: v1 50%, v2 50%"
        await asyncio.sleep(1.0)  # noticed within a batch
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file) as client:
            async def turns(chat: int) -> set[str]:
                key = conversation_key(chat, PERSONA)
                return {(await client.reply(PERSONA, request(message).model_copy(update={"conversation": key}))).model_version
                        for message in [*MESSAGES, "пока"]}
            answered = await asyncio.gather(*(turns(chat) for chat in range(8)))
            keyless = await client.reply(PERSONA, request("привет"))
            pinned = await client.reply(PERSONA, request("привет"), version=2)
        assert all(len(versions) == 1 for versions in answered), answered
        assert set().union(*answered) == {"1", "2"}
        assert (keyless.model_version, pinned.model_version) == ("1", "2")
        assert switch("--weight", "0") == f"{PERSONA} serves v1 (versions: 1, 2)"
    finally:
        update_routing(torchserve.model_store, initial_routing)


def test_a_weight_needs_another_serving_version_to_share_with(torchserve):
    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "switch", "--model-store", str(torchserve.model_store),
         "--persona", PERSONA, "--version", "1", "--weight", "10"], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and result.stderr.startswith("persona: error: ") and "v1 is the serving one" in result.stderr


def test_switch_refuses_a_folder_whose_record_names_another_version(torchserve):
    """A `v5` folder holding version 3 would send every unpinned request to a 503."""
    store = torchserve.model_store
    mislabelled = store / PERSONA / "v5"
    shutil.copytree(store / PERSONA / "v1", mislabelled)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "persona_cli", "switch", "--model-store", str(store),
             "--persona", PERSONA, "--version", "5"], capture_output=True, text=True, timeout=60,
        )
        table = read_routing(store)
    finally:
        shutil.rmtree(mislabelled)
    assert result.returncode == 2 and result.stderr.startswith("persona: error: "), result.stderr
    assert f"names {PERSONA} v1, not {PERSONA} v5" in result.stderr and result.stderr.count("\n") == 1
    assert 5 not in table.personas[PERSONA].versions


async def test_a_persona_folder_linked_out_of_the_store_is_never_served(torchserve, tiny_run, tmp_path):
    """A complete, well-labelled version outside the store, reached through a symlink in it:
    neither routed by `persona serve` nor loaded by a worker when a table lists it anyway."""
    store = torchserve.model_store
    publish(tiny_run, "outsider", 1, tmp_path / "elsewhere")
    (store / "outsider").symlink_to(tmp_path / "elsewhere" / "outsider")
    try:
        assert "outsider" not in route_unlisted(store).personas
        update_routing(store, lambda table: table.add("outsider", 1, serve=True))
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, retries=0) as client:
            with pytest.raises(InferenceUnavailable) as refused:
                await client.reply("outsider", request("привет"))
            still = await client.reply(PERSONA, request("привет"))
    finally:
        (store / "outsider").unlink()
        update_routing(store, initial_routing)
    assert "adapter_unavailable" in str(refused.value) and "outside the model store" in str(refused.value)
    assert still.model_version == "1"


async def test_a_missing_or_corrupt_adapter_fails_its_requests_alone(torchserve):
    store = torchserve.model_store
    corrupt = store / PERSONA / "v3"
    shutil.copytree(store / PERSONA / "v1", corrupt)
    (corrupt / ADAPTER_DIR / "adapter_model.safetensors").write_bytes(b"not weights")
    (corrupt / "version.json").write_text((corrupt / "version.json").read_text().replace('"version": 1', '"version": 3'))

    def list_broken(table) -> None:
        table.add(PERSONA, 3, serve=False)  # corrupt
        table.add(PERSONA, 4, serve=False)  # no folder at all

    update_routing(store, list_broken)
    try:
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, retries=0) as client:
            outcomes = await asyncio.gather(
                client.reply(PERSONA, request("раз"), version=3),
                client.reply(PERSONA, request("два")),
                client.reply(PERSONA, request("три"), version=4),
                client.reply(OTHER_PERSONA, request("четыре")),
                return_exceptions=True,
            )
            again = await client.reply(PERSONA, request("пять"))
    finally:
        update_routing(store, initial_routing)
        shutil.rmtree(corrupt)
    assert isinstance(outcomes[0], InferenceUnavailable) and "adapter_unavailable" in str(outcomes[0])
    assert isinstance(outcomes[2], InferenceUnavailable) and "no version.json" in str(outcomes[2])
    assert outcomes[1].model_version == "1" and outcomes[3].persona == OTHER_PERSONA
    assert again.model_version == "1"


async def test_an_invalid_routing_table_is_ignored_and_the_last_good_one_stays(torchserve):
    table = torchserve.model_store / ROUTING_FILE
    try:
        table.write_text('{"personas": {"devops-dude": {"serving": 2, "versi')  # half a file, written in place
        async with InferenceClient(torchserve.inference_url, token_file=torchserve.key_file, retries=0) as client:
            answers = [await client.reply(PERSONA, request("привет")) for _ in range(2)]
            with pytest.raises(InferenceRejected) as refused:
                await client.reply("nobody", request("привет"))
    finally:
        good = RoutingTable()
        initial_routing(good)
        write_routing(torchserve.model_store, good)  # update_routing would refuse to read the bad one
    assert [a.model_version for a in answers] == ["1", "1"]
    assert refused.value.error == "unknown_persona"
    log = (torchserve.workdir / "logs" / "model_log.log").read_text(encoding="utf-8", errors="replace")
    assert "Ignoring the routing table" in log
