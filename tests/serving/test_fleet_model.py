"""The fleet worker's model without TorchServe: one base, adapters of real `persona train` runs in
slots, mixed-adapter batches, faulty versions refused alone (the slot layer against PEFT:
test_slots.py)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from persona_serving.fleet import AdapterUnavailable, FleetModel
from persona_training.package import publish_version
from personafleet.store import ADAPTER_DIR, VERSION_FILE

GREEDY = {"max_new_tokens": 8, "do_sample": False}
PROMPTS = ["что там с деплоем?", "как дела у команды?"]


@pytest.fixture(scope="module")
def store(tiny_run: Path, other_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet-model") / "store"
    publish_version(tiny_run, "devops-dude", 1, root / "devops-dude" / "v1")
    publish_version(other_run, "pm-life", 1, root / "pm-life" / "v1")
    return root


@pytest.fixture()
def fleet(tiny_base: Path) -> FleetModel:
    return FleetModel(str(tiny_base), torch.device("cpu"), torch.float32, max_resident_adapters=2)


def test_each_row_of_a_mixed_batch_is_answered_by_its_own_adapter(fleet: FleetModel, store: Path):
    dude, pm = fleet.load(store, "devops-dude", 1), fleet.load(store, "pm-life", 1)
    assert (dude.spec.name, pm.spec.name, pm.version) == ("devops-dude", "pm-life", 1)
    assert {fleet.slot(dude), fleet.slot(pm)} == {1, 2} and fleet.slot(None) == 0
    mixed, _ = fleet.generate(PROMPTS * 2, [dude, pm, pm, dude], GREEDY)
    alone = {entry.persona: fleet.generate(PROMPTS, [entry, entry], GREEDY)[0] for entry in (dude, pm)}
    assert mixed == [alone["devops-dude"][0], alone["pm-life"][1], alone["pm-life"][0], alone["devops-dude"][1]]
    assert alone["devops-dude"] != alone["pm-life"], "the two adapters must answer differently"


def test_an_evicted_adapter_is_freed_and_can_be_loaded_again(fleet: FleetModel, store: Path):
    dude, pm = fleet.load(store, "devops-dude", 1), fleet.load(store, "pm-life", 1)
    before, _ = fleet.generate(PROMPTS[:1], [pm], GREEDY)
    fleet.unload(dude)
    fleet.unload(pm)
    assert fleet.slots_in_use == 0
    with pytest.raises(KeyError, match="not resident"):
        fleet.slot(pm)
    pm = fleet.load(store, "pm-life", 1)
    assert fleet.slot(pm) == 1  # the lowest free slot, reused
    assert fleet.generate(PROMPTS[:1], [pm], GREEDY)[0] == before


def test_missing_unpublished_and_corrupt_versions_are_refused_alone(fleet: FleetModel, store: Path, tmp_path: Path):
    dude = fleet.load(store, "devops-dude", 1)
    expected, _ = fleet.generate(PROMPTS[:1], [dude], GREEDY)
    with pytest.raises(AdapterUnavailable, match="no version.json"):
        fleet.load(store, "devops-dude", 9)

    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    (bad / "pm-life" / "v1" / ADAPTER_DIR / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(AdapterUnavailable, match="adapter_model.safetensors is unreadable"):
        fleet.load(bad, "pm-life", 1)
    (bad / "devops-dude" / "v1" / VERSION_FILE).write_text('{"persona": "devops-dude"')
    with pytest.raises(AdapterUnavailable, match="not a valid version record"):
        fleet.load(bad, "devops-dude", 1)
    assert fleet.generate(PROMPTS[:1], [dude], GREEDY)[0] == expected


@pytest.mark.parametrize(("change", "reason"), [
    ({"r": 4}, "no rank-4 pair, as adapter_config.json says"),
    ({"peft_type": "IA3"}, "not a LoRA adapter"),
])
def test_an_adapter_that_does_not_fit_the_base_is_refused_and_the_others_keep_working(
        fleet: FleetModel, store: Path, tmp_path: Path, change: dict, reason: str):
    dude = fleet.load(store, "devops-dude", 1)
    expected, _ = fleet.generate(PROMPTS[:1], [dude], GREEDY)
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    config_file = bad / "pm-life" / "v1" / ADAPTER_DIR / "adapter_config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | change))
    with pytest.raises(AdapterUnavailable, match=reason):
        fleet.load(bad, "pm-life", 1)
    assert fleet.slots_in_use == 1
    assert fleet.generate(PROMPTS[:1], [dude], GREEDY)[0] == expected
