"""The fleet worker on a causal base (issue 22): the same fleet, loaded through
`AutoModelForCausalLM`, prompts left-padded, replies cut to the new tokens; and the worker's one
serving path, step-level scheduling (issue 21), streams causal replies that equal `generate`'s."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from persona_serving.fleet import AdapterUnavailable, FleetModel
from persona_training.package import publish_version
from personafleet.persona import PERSONA_FILE
from personafleet.routing import update_routing
from tests.fixtures.causal_model import CAUSAL_PERSONA
from tests.fixtures.handler import final, start_worker, whole_reply_path

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
    update_routing(root, lambda table: [table.add(name, 1, serve=True) for name in (CAUSAL_PERSONA, "causal-pm")])
    return root


@pytest.fixture(scope="module")
def gpt2_store(gpt2_base: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_model import train_tiny_run

    root = tmp_path_factory.mktemp("gpt2-fleet")
    run = train_tiny_run(gpt2_base, tiny_data, root / "run", steps=1)
    publish_version(run, "gpt-dude", 1, root / "store" / "gpt-dude" / "v1")
    update_routing(root / "store", lambda table: table.add("gpt-dude", 1, serve=True))
    return root / "store"


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


def test_a_gpt2_base_without_a_pad_token_serves_with_eos_padding(gpt2_base: Path, gpt2_store: Path):
    fleet = FleetModel(str(gpt2_base), torch.device("cpu"), torch.float32)
    assert fleet.tokenizer.pad_token == fleet.tokenizer.eos_token == "<|endoftext|>"
    entry = fleet.load(gpt2_store, "gpt-dude", 1)
    replies, counts = fleet.generate(PROMPTS, [entry] * 2, GREEDY)
    assert len(replies) == 2 and all(0 <= count <= 8 for count in counts)
    assert replies[1] == fleet.generate(PROMPTS[1:], [entry], GREEDY)[0][0]


# --- the streaming path: the fleet worker's step-level scheduling on a causal base -------------
CAP = 10
STREAM_GREEDY = {"do_sample": False, "repetition_penalty": 1.5}
HISTORY = [{"role": "user", "text": "ребята, релиз сегодня или переносим?"},
           {"role": "persona", "text": "сегодня, если тесты зелёные"}]


def ask(persona: str, message: str, context: list[dict] | None = None) -> dict:
    return {"persona": persona, "message": message, "context": context or [],
            "generation": {"max_new_tokens": CAP, **STREAM_GREEDY}}


def test_streamed_rows_of_two_personas_joining_at_different_steps_match_the_whole_reply_path(
        causal_base: Path, store: Path, tmp_path: Path):
    """Prompts of different lengths (left-padded into one cache), two adapters, rows joining while
    others decode: each streamed reply is what `generate` gives that request alone."""
    worker = start_worker(tmp_path, causal_base, store, max_new_tokens=CAP)
    bodies = {"a": ask(CAUSAL_PERSONA, "что там с деплоем?"), "b": ask("causal-pm", "кто сломал прод", HISTORY),
              "c": ask(CAUSAL_PERSONA, "привет", HISTORY), "d": ask("causal-pm", "логи смотрел?")}
    answers = worker.run([{"a": bodies["a"]}, {}, {"b": bodies["b"], "c": bodies["c"]}], finish=False)
    live = worker.handler.runner.batch.self_mask
    assert len(live) == 3 and not live[:, 0].all(), "rows of different lengths share one left-padded cache"
    worker.run([{}, {}, {"d": bodies["d"]}], answers)
    whole = whole_reply_path(causal_base, store, max_new_tokens=CAP)
    replies = {}
    for request_id, body in bodies.items():
        event = final(answers[request_id])
        assert event.persona == body["persona"] and event.tokens > 0, request_id
        assert event.reply == whole(body), request_id
        replies[request_id] = event.reply
    assert len(set(replies.values())) > 1, "the requests were really answered differently"
    assert worker.handler.runner.cached_tokens == 0 and not worker.handler.streams


def test_a_gpt2_base_without_a_pad_token_streams_what_generate_gives(gpt2_base: Path, gpt2_store: Path, tmp_path: Path):
    """EOS doubles as the padding of shorter prompts (and stops a row): padding stays masked."""
    worker = start_worker(tmp_path, gpt2_base, gpt2_store, max_new_tokens=CAP)
    bodies = {"long": ask("gpt-dude", "опять всё упало после релиза, ты смотрел логи?", HISTORY),
              "short": ask("gpt-dude", "ну что?")}
    answers = worker.run([{"long": bodies["long"]}, {}, {"short": bodies["short"]}])
    whole = whole_reply_path(gpt2_base, gpt2_store, max_new_tokens=CAP)
    for request_id, body in bodies.items():
        assert final(answers[request_id]).reply == whole(body), request_id
