"""`persona init-base`: the tiny T5 loads through the production `from_pretrained` path."""

import json
import random
import subprocess
from pathlib import Path

import pytest

from personafleet.prompt import PromptTemplate, Turn, render_prompt
from persona_training.base_model import BASE_INFO_FILE, span_corrupt

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"


def test_base_round_trips_through_auto_classes(tiny_base):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_base)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert model.config.model_type == "t5" and model.config.decoder_start_token_id == 0
    assert model.config.vocab_size == len(tokenizer)

    prompt = render_prompt(PromptTemplate(), "Я инженер DevOps.", [Turn(role="user", text="как задеплоить в k8s?")])
    ids = tokenizer(prompt, return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(ids.input_ids[0])
    assert tokens[0] == "<SC6>" and tokens[-2:] == ["<extra_id_0>", "</s>"]  # template words stay whole
    assert tokenizer.unk_token_id not in ids.input_ids[0].tolist()  # the alphabet covers the chat
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[0] == 1 and 1 < generated.shape[1] <= 6


def test_pretraining_lowered_the_denoising_loss(tiny_base):
    info = json.loads((tiny_base / BASE_INFO_FILE).read_text(encoding="utf-8"))
    assert info["pretraining_loss"]["last"] < info["pretraining_loss"]["first"] - 0.5
    assert info["messages"] > 1000 and info["parameters"] < 500_000


@pytest.mark.parametrize("length", [3, 10, 64])
def test_span_corruption_hides_spans_that_the_target_restores(length):
    ids = list(range(100, 100 + length))
    sentinels = [-1, -2, -3, -4]
    inputs, targets = span_corrupt(ids, sentinels, random.Random(length), density=0.15, mean_span=3.0)
    restored: list[int] = []
    spans = {}
    current = None
    for token in targets:
        if token < 0:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    for token in inputs:
        restored += spans[token] if token < 0 else [token]
    assert restored == ids
    assert 1 <= len(spans) <= len(sentinels) and all(spans.values())


def test_init_base_cli_refuses_a_corpus_that_is_not_an_export(tmp_path):
    corpus = tmp_path / "result.json"
    corpus.write_text('{"hello": "world"}', encoding="utf-8")
    result = subprocess.run(
        [PERSONA, "init-base", "--out", str(tmp_path / "base"), "--corpus", str(corpus)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not a Telegram Desktop export" in result.stderr
    assert not (tmp_path / "base").exists()


def test_init_base_cli_refuses_an_unknown_shape(tmp_path):
    result = subprocess.run(
        [PERSONA, "init-base", "--out", str(tmp_path / "base"), "--shape", "gpt"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2 and result.stderr == "persona: error: --shape gpt: a seq2seq base is t5 or fred\n"
    assert not (tmp_path / "base").exists()
