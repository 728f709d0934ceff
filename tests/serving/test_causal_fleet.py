"""The fleet worker's model on a causal base (issue 22): the same fleet, loaded through
`AutoModelForCausalLM`, prompts left-padded, replies cut to the new tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from persona_serving.fleet import AdapterUnavailable, FleetModel
from persona_training.package import publish_version
from personafleet.persona import PERSONA_FILE
from tests.fixtures.causal_model import CAUSAL_PERSONA

# The tiny bases repeat one token under plain greedy search; the penalty makes them say something.
GREEDY = {"max_new_tokens": 8, "do_sample": False, "repetition_penalty": 1.5}
# Prompts of different lengths: in one batch the shorter ones are padded (on the left).
PROMPTS = ["Собеседник: что там с деплоем?\nТы:", "Я DevOps. Продолжи диалог:\nСобеседник: как дела у команды? "
           "опять всё упало после релиза, ты смотрел логи?\nТы:"]


@pytest.fixture(scope="module")
def store(causal_run: Path, causal_other_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("causal-fleet") / "store"
    publish_version(causal_run, CAUSAL_PERSONA, 1, root / CAUSAL_PERSONA / "v1")
    publish_version(causal_other_run, "causal-pm", 1, root / "causal-pm" / "v1")
    return root


@pytest.fixture(scope="module")
def fleet(causal_base: Path) -> FleetModel:
    return FleetModel(str(causal_base), torch.device("cpu"), torch.float32)


def test_the_fleet_loads_a_causal_base_through_the_causal_auto_class(fleet: FleetModel):
    assert fleet.family.name == "causal" and type(fleet.model).__name__ == "LlamaForCausalLM"
    assert fleet.tokenizer.padding_side == "left"


def test_a_reply_is_what_the_merged_model_generates_after_the_prompt(fleet: FleetModel, store: Path, causal_run: Path):
    """The fleet's reply = the new tokens of the adapter's model, decoded: neither the prompt nor
    a token of it is in the reply, and a lone prompt has no padding that could change it."""
    from transformers import AutoModelForCausalLM

    dude = fleet.load(store, CAUSAL_PERSONA, 1)
    merged = AutoModelForCausalLM.from_pretrained(causal_run / "merged").eval()
    for prompt in PROMPTS:
        [reply], [count] = fleet.generate([prompt], [dude], GREEDY)
        ids = fleet.family.encode_prompts(fleet.tokenizer, [prompt], 512)
        assert ids[0][-1] != fleet.tokenizer.eos_token_id  # the prompt does not end the conversation
        output = merged.generate(torch.tensor(ids), **GREEDY, pad_token_id=fleet.tokenizer.pad_token_id)
        new = output[0, len(ids[0]):].tolist()
        assert reply == " ".join(fleet.tokenizer.decode(new, skip_special_tokens=True).split())
        assert reply and 0 < count <= 8 and "Собеседник" not in reply


def test_each_row_of_a_mixed_left_padded_batch_is_answered_by_its_own_adapter(fleet: FleetModel, store: Path):
    dude, pm = fleet.load(store, CAUSAL_PERSONA, 1), fleet.load(store, "causal-pm", 1)
    mixed, _ = fleet.generate(PROMPTS * 2, [dude, pm, pm, dude], GREEDY)
    alone = {entry.persona: [fleet.generate([p], [entry], GREEDY)[0][0] for p in PROMPTS] for entry in (dude, pm)}
    assert mixed == [alone[dude.persona][0], alone[pm.persona][1], alone[pm.persona][0], alone[dude.persona][1]]
    assert alone[dude.persona] != alone[pm.persona], "the two adapters must answer differently"


def test_a_chat_template_persona_on_a_base_without_one_is_refused_alone(fleet: FleetModel, store: Path, tmp_path: Path):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    spec_file = bad / "causal-pm" / "v1" / PERSONA_FILE
    spec = json.loads(spec_file.read_text())
    spec["template"]["style"] = "chat"
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(AdapterUnavailable, match="chat template, base .* has none"):
        fleet.load(bad, "causal-pm", 1)
    dude = fleet.load(store, CAUSAL_PERSONA, 1)
    assert fleet.generate(PROMPTS[:1], [dude], GREEDY)[0][0]


def test_a_gpt2_base_without_a_pad_token_serves_with_eos_padding(gpt2_base: Path, tiny_data: Path, tmp_path: Path):
    from tests.fixtures.tiny_model import train_tiny_run

    run = train_tiny_run(gpt2_base, tiny_data, tmp_path / "run", steps=1)
    publish_version(run, "gpt-dude", 1, tmp_path / "store" / "gpt-dude" / "v1")
    fleet = FleetModel(str(gpt2_base), torch.device("cpu"), torch.float32)
    assert fleet.tokenizer.pad_token == fleet.tokenizer.eos_token == "<|endoftext|>"
    entry = fleet.load(tmp_path / "store", "gpt-dude", 1)
    replies, counts = fleet.generate(PROMPTS, [entry] * 2, GREEDY)
    assert len(replies) == 2 and all(0 <= count <= 8 for count in counts)
    assert replies[1] == fleet.generate(PROMPTS[1:], [entry], GREEDY)[0][0]
