"""The FRED-T5 tokenizer path (issue 11.4): the fixture is laid out like FRED-T5, and training
on it appends the EOS its tokenizer does not."""

import json
from pathlib import Path

from personafleet.family import ModelFamily
from personafleet.persona import PersonaSpec
from personafleet.prompt import PromptTemplate, Turn, render_prompt
from personafleet.records import read_records
from persona_training.data import tokenize_records
from tests.fixtures.fred_model import FRED_PERSONA


def test_the_tokenizer_is_a_byte_level_bpe_with_freds_plain_added_tokens(fred_base: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fred_base)
    assert type(tokenizer).__name__.startswith("GPT2Tokenizer")  # transformers 5: one class, backed by `tokenizers`
    assert json.loads((fred_base / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token == "<|endoftext|>"
    # FRED's order: <extra_id_0..99> right after the BPE vocabulary, then <LM>, then <SC1>..<SC6>.
    first = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    added = [f"<extra_id_{i}>" for i in range(100)] + ["<LM>"] + [f"<SC{i}>" for i in range(1, 7)]
    assert tokenizer.convert_tokens_to_ids(added) == list(range(first, first + 107)) and first + 107 == len(tokenizer)
    assert not set(added) & set(tokenizer.all_special_tokens)  # plain added tokens, as in FRED's added_tokens.json
    # Encoding appends nothing; decoding with skip_special_tokens keeps the added markers.
    reply = tokenizer("ну смотри").input_ids
    assert tokenizer.eos_token_id not in reply
    decoded = tokenizer.decode([first, *reply, tokenizer.eos_token_id], skip_special_tokens=True)
    assert decoded.startswith("<extra_id_0>") and "</s>" not in decoded
    prompt = render_prompt(PromptTemplate(), "Я DevOps.", [Turn(role="user", text="как задеплоить?")])
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
    assert tokens[0] == "<SC6>" and tokens[-1] == "<extra_id_0>"


def test_the_model_has_freds_configuration_and_starts_answers_with_the_sentinel(fred_base: Path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    config = json.loads((fred_base / "config.json").read_text())
    assert (config["feed_forward_proj"], config["dense_act_fn"], config["is_gated_act"]) == ("gated-gelu", "gelu_new", True)
    assert config["tie_word_embeddings"] is False
    ids = (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"], config["decoder_start_token_id"])
    assert ids == (0, 1, 2, 0)
    model = AutoModelForSeq2SeqLM.from_pretrained(fred_base)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()  # untied, as FRED's checkpoint
    assert model.config.scale_decoder_outputs is False  # so no d_model**-0.5 output scaling
    tokenizer = AutoTokenizer.from_pretrained(fred_base)
    prompt = render_prompt(PromptTemplate(), "Я DevOps.", [Turn(role="user", text="как задеплоить?")])
    output = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert output[0, 1].item() == tokenizer.convert_tokens_to_ids("<extra_id_0>")


def test_training_targets_end_with_the_eos_freds_tokenizer_does_not_append(fred_base: Path, tiny_data: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fred_base)
    records = read_records(tiny_data / "val.jsonl")[:20]
    examples = tokenize_records(records, tokenizer, ModelFamily("seq2seq", "t5"), PersonaSpec(name=FRED_PERSONA), max_source=128, max_target=64)
    eos = tokenizer.eos_token_id
    for record, example in zip(records, examples):
        assert example.labels[-1] == eos and example.labels.count(eos) == 1
        assert example.labels[:-1] == tokenizer(text_target=record.reply.text).input_ids[:63]
        assert tokenizer.convert_ids_to_tokens(example.input_ids[-1]) == "<extra_id_0>"


def test_a_run_on_the_fred_base_trains_and_keeps_its_tokenizer(fred_run: Path):
    from transformers import AutoTokenizer

    report = json.loads((fred_run / "report.json").read_text())
    assert report["eval"]["after"]["loss"] < report["eval"]["before"]["loss"]
    assert json.loads((fred_run / "persona.json").read_text())["name"] == FRED_PERSONA
    assert type(AutoTokenizer.from_pretrained(fred_run)).__name__.startswith("GPT2Tokenizer")
    assert (fred_run / "merged" / "config.json").is_file()
