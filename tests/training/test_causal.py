"""Causal (decoder-only) bases in training (issue 22): `persona init-base --arch causal`, the
reply-only loss, family defaults for the template and LoRA targets, and the bad input the issue lists."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from personafleet.errors import PersonaError
from personafleet.family import IGNORE_INDEX, load_family
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.records import read_records
from persona_training.config import TrainConfig
from persona_training.data import tokenize_records
from persona_training.modeling import load_tokenizer
from persona_training.train import train
from tests.fixtures.causal_model import CAUSAL_PERSONA

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"
QUICK = dict(max_steps=2, warmup_steps=0, batch_size=8, eval_every=1000, checkpoint_every=1000, max_source_tokens=64)


def test_the_causal_base_loads_through_the_causal_auto_class_with_plain_linear_projections(causal_base: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(causal_base)
    tokenizer = AutoTokenizer.from_pretrained(causal_base)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == len(tokenizer)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)  # the tiny T5's tokenizer pipeline
    attention = model.model.layers[0].self_attn
    assert all(type(getattr(attention, name)) is torch.nn.Linear for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    info = json.loads((causal_base / "persona_base.json").read_text())
    assert info["family"] == "causal" and info["pretraining_loss"]["last"] < info["pretraining_loss"]["first"] - 0.5


def test_a_causal_example_puts_the_loss_on_the_reply_and_its_eos_only(causal_base: Path, tiny_data: Path):
    family = load_family(str(causal_base))
    tokenizer = load_tokenizer(str(causal_base), family)
    records = read_records(tiny_data / "val.jsonl")[:8]
    examples = tokenize_records(records, tokenizer, family, PersonaSpec(template=family.default_template(tokenizer)),
                                64, 16)
    eos = tokenizer.eos_token_id
    for record, example in zip(records, examples):
        assert len(example.input_ids) == len(example.labels) and example.input_ids[-1] == eos
        prompt = [i for i, label in enumerate(example.labels) if label == IGNORE_INDEX]
        assert prompt == list(range(len(prompt))) and 0 < len(prompt) <= 64  # the prompt first, all ignored
        reply = example.labels[len(prompt):]
        assert reply == example.input_ids[len(prompt):] and reply.count(eos) == 1  # EOS once: after the reply
        assert tokenizer.decode(reply, skip_special_tokens=True).split()[0] in record.reply.text
        assert family.prompt_length(example.input_ids, example.labels) == len(prompt)
        assert tokenizer.decode(example.input_ids[:len(prompt)]).rstrip().endswith("Ты:")


def test_a_causal_run_reports_its_family_defaults_and_the_perplexity_it_reached(causal_run: Path):
    report = json.loads((causal_run / "report.json").read_text())
    assert report["family"] == "causal" and report["config"]["target_modules"] == ["q_proj", "v_proj"]
    before, after = report["eval"]["before"], report["eval"]["after"]
    val = report["data"]["val"]
    assert after["loss"] < before["loss"] and before["tokens"] == after["tokens"]
    assert before["tokens"] == pytest.approx(val["target_tokens"]["mean"] * val["examples"], abs=val["examples"] * 0.05)
    assert val["source_tokens"]["max"] <= 128  # max_source_tokens: the prompt alone, without the reply
    persona = PersonaSpec.model_validate_json((causal_run / PERSONA_FILE).read_text())
    assert persona.name == CAUSAL_PERSONA and persona.template.style == "plain"
    assert (persona.template.prefix, persona.template.answer_marker) == ("", "")  # no FRED markers for a causal base
    card = (causal_run / "README.md").read_text()
    assert "AutoModelForCausalLM" in card and "causal base" in card and f"{after['perplexity']:.1f}" in card
    adapter = json.loads((causal_run / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"


def test_a_template_the_config_names_is_kept(causal_base: Path, tiny_data: Path, tmp_path: Path):
    from personafleet.prompt import PromptTemplate

    chosen = PromptTemplate(prefix="", answer_marker="", persona_label="Борис")
    train([tiny_data], str(causal_base), tmp_path / "run",
          TrainConfig(persona=PersonaSpec(template=chosen), **QUICK | {"max_steps": 1}))
    assert PersonaSpec.model_validate_json((tmp_path / "run" / PERSONA_FILE).read_text()).template == chosen


def test_a_causal_base_without_a_pad_token_trains_with_eos_padding_and_says_so(
        gpt2_base: Path, tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(gpt2_base).pad_token is None  # as ruGPT-3's
    with caplog.at_level(logging.WARNING):
        report = train([tiny_data], str(gpt2_base), tmp_path / "run", TrainConfig(**QUICK))
    assert any("has no pad token: padding with its end-of-sequence token" in r.message for r in caplog.records)
    assert report["family"] == "causal" and report["config"]["target_modules"] == ["c_attn"]  # GPT-2's fused Conv1D
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    assert report["eval"]["after"]["loss"] < report["eval"]["before"]["loss"] + 0.5


def test_target_modules_the_base_lacks_are_a_clear_error(causal_base: Path, tiny_data: Path, tmp_path: Path):
    with pytest.raises(PersonaError) as error:
        train([tiny_data], str(causal_base), tmp_path / "run", TrainConfig(target_modules=["q", "v", "q_proj"], **QUICK))
    message = str(error.value)
    assert message.startswith("LoRA target_modules q, v not in base") and "(llama)" in message
    assert "q_proj" in message.split("linear layers are:")[1] and "\n" not in message


def test_init_base_cli_builds_a_causal_base_and_refuses_a_seq2seq_shape(tmp_path: Path):
    refused = subprocess.run([PERSONA, "init-base", "--arch", "causal", "--shape", "fred", "--out", str(tmp_path / "b")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert refused.returncode == 2 and refused.stderr == "persona: error: --shape fred: a causal base is llama or gpt2\n"
    unknown = subprocess.run([PERSONA, "init-base", "--arch", "rnn", "--out", str(tmp_path / "b")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr == "persona: error: --arch rnn: choose seq2seq or causal\n"
    assert not (tmp_path / "b").exists()
