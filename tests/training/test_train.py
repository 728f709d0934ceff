"""`persona train`: the run directory, the batching, and the errors a user can meet."""

import json
import math
import subprocess
from pathlib import Path

import pytest

from personafleet.errors import PersonaError
from personafleet.family import ModelFamily
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.records import DialogueRecord, Source, Utterance, write_records
from persona_training.config import TrainConfig
from persona_training.data import IGNORE_INDEX, LengthGroupedBatches, TokenizedExample, collate, load_dialogues
from persona_training.modeling import pick_hardware, quiet_peft
from persona_training.train import train

SEQ2SEQ = ModelFamily("seq2seq", "t5")

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"


def record(number: int, text: str = "ну смотри, классика.") -> DialogueRecord:
    return DialogueRecord(
        context=[Utterance(author="user1", name="Anna", text=f"вопрос {number}?")],
        reply=Utterance(author="user2", name="Boris", text=text),
        source=Source(chat_id=1, message_id=number),
    )


def dataset(directory: Path, train: int, val: int) -> Path:
    directory.mkdir(parents=True)
    if train:
        write_records(directory / "train.jsonl", [record(i) for i in range(train)])
    if val:
        write_records(directory / "val.jsonl", [record(1000 + i) for i in range(val)])
    return directory


# --- the run directory -------------------------------------------------------------------------

def test_run_dir_holds_adapter_tokenizer_persona_and_report(tiny_run, tiny_base):
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "report.json",
                 "loss_curve.png", "README.md", PERSONA_FILE):
        assert (tiny_run / name).is_file(), name
    assert not (tiny_run / "checkpoints").exists()
    persona = PersonaSpec.model_validate_json((tiny_run / PERSONA_FILE).read_text(encoding="utf-8"))
    assert persona.name == "devops-dude"
    assert (tiny_run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((tiny_run / "report.json").read_text(encoding="utf-8"))
    assert report["base_model"] == str(tiny_base.resolve())
    assert report["steps"] == 6 and report["samples"] == 6 * 8 and report["samples_per_second"] > 0
    assert report["config"]["max_steps"] == 6 and report["persona"]["name"] == "devops-dude"
    assert report["data"]["train"]["examples"] > 1000 and report["data"]["val"]["examples"] > 50
    for when in ("before", "after"):
        assert math.isclose(report["eval"][when]["perplexity"], math.exp(report["eval"][when]["loss"]))
    assert report["eval"]["after"]["loss"] < report["eval"]["before"]["loss"]
    assert len(report["train_loss"]) == 6 and report["eval"]["history"][-1]["step"] == 6
    card = (tiny_run / "README.md").read_text(encoding="utf-8")
    assert "# devops-dude" in card and f"{report['eval']['after']['perplexity']:.1f}" in card


def test_adapter_and_merged_model_load_with_from_pretrained_and_agree(tiny_run, tiny_base):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    with quiet_peft():
        adapted = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_base), tiny_run).eval()
    merged = AutoModelForSeq2SeqLM.from_pretrained(tiny_run / "merged").eval()
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_base).eval()
    batch = tokenizer(["<SC6>Продолжи диалог:\nСобеседник: привет\nТы: <extra_id_0>"], return_tensors="pt")
    labels = tokenizer(text_target=["ну смотри, классика."], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = [m(**batch, labels=labels).logits for m in (adapted, merged, base)]
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    assert not torch.allclose(logits[0], logits[2], atol=1e-3)  # the adapter changed something


# --- batching ----------------------------------------------------------------------------------

def test_collate_pads_to_the_longest_and_masks_padded_labels():
    batch = collate([TokenizedExample([5, 6, 1], [7, 1]), TokenizedExample([5, 1], [7, 8, 9, 1])])
    assert batch["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 1, IGNORE_INDEX, IGNORE_INDEX], [7, 8, 9, 1]]


def test_length_grouped_batches_are_deterministic_complete_and_tight():
    import random

    lengths = [random.Random(i).randint(5, 300) for i in range(1000)]
    sampler = LengthGroupedBatches(lengths, batch_size=16, group_size=10, seed=3)
    first = sampler.epoch(0)
    assert first == LengthGroupedBatches(lengths, 16, 10, 3).epoch(0)  # same seed, same order
    assert first != sampler.epoch(1)  # a new order every epoch
    assert sorted(i for batch in first for i in batch) == list(range(1000)) and len(first) == len(sampler)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in first)
    shuffled = list(range(1000))
    random.Random(0).shuffle(shuffled)
    naive = sum(16 * max(lengths[i] for i in shuffled[s:s + 16]) for s in range(0, 1000, 16))
    assert padded < 0.6 * naive


# --- data and errors ---------------------------------------------------------------------------

def test_several_data_dirs_are_concatenated_and_one_may_lack_val(tmp_path):
    data = load_dialogues([dataset(tmp_path / "a", 5, 2), dataset(tmp_path / "feedback", 3, 0)])
    assert (len(data.train), len(data.val)) == (8, 2)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: tmp / "missing", "no such data directory"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no train.jsonl or val.jsonl"),
        (lambda tmp: dataset(tmp / "d", 0, 3), "no training records"),
        (lambda tmp: dataset(tmp / "d", 3, 0), "no validation records"),
    ],
)
def test_bad_data_is_a_one_line_error(tmp_path, make, says):
    with pytest.raises(PersonaError, match=says) as error:
        train([make(tmp_path)], "unused", tmp_path / "run", TrainConfig())
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_record_of_the_wrong_shape_names_file_and_line(tmp_path):
    directory = dataset(tmp_path / "d", 2, 2)
    with (directory / "train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"question": "hi", "answer": "hello"}\n')
    with pytest.raises(PersonaError, match=r"train.jsonl:3: not a dialogue record"):
        train([directory], "unused", tmp_path / "run", TrainConfig())


@pytest.mark.parametrize("base", ["not-a-model-dir", "junk"])
def test_a_base_that_cannot_be_loaded_is_a_one_line_error(tmp_path, base):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json", encoding="utf-8")
    where = str(junk) if base == "junk" else str(tmp_path / base)
    with pytest.raises(PersonaError, match="cannot read the config of base") as error:
        train([dataset(tmp_path / "d", 4, 2)], where, tmp_path / "run", TrainConfig())
    assert "\n" not in str(error.value)


def test_cpu_refuses_8bit_and_half_precision():
    with pytest.raises(PersonaError, match="load_in_8bit needs a CUDA GPU"):
        pick_hardware(TrainConfig(load_in_8bit=True))
    with pytest.raises(PersonaError, match="precision bf16 needs a CUDA GPU"):
        pick_hardware(TrainConfig(precision="bf16"))
    assert (pick_hardware(TrainConfig()).device, pick_hardware(TrainConfig()).precision) == ("cpu", "fp32")


def test_cli_reports_a_missing_data_dir_on_one_line(tmp_path):
    result = subprocess.run(
        [PERSONA, "train", "--data", str(tmp_path / "nope"), "--base", "x", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("persona: error: ") and "no such data directory" in result.stderr


def test_targets_end_with_eos_even_when_the_tokenizer_does_not_append_it(tiny_base):
    """FRED-T5's GPT-2-style tokenizer adds no </s>; the model must still learn to stop."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from persona_training.data import tokenize_records

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    assert tokenizer("классика")["input_ids"][-1] != tokenizer.eos_token_id
    examples = tokenize_records([record(1), record(2, "ну смотри, " * 50)], tokenizer, SEQ2SEQ, PersonaSpec(), 64, 8)
    assert all(e.labels[-1] == tokenizer.eos_token_id for e in examples)
    assert len(examples[1].labels) == 8 and examples[0].input_ids[-1] != tokenizer.eos_token_id


def test_an_overlong_prompt_loses_its_start_and_keeps_the_newest_turn_and_answer_marker(tiny_base):
    """Serving cuts prompts on the left (the handler); training must cut the same side."""
    from transformers import AutoTokenizer

    from persona_training.data import tokenize_records

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    long = DialogueRecord(
        context=[Utterance(author="user1", name="Anna", text="старое " * 60),
                 Utterance(author="user1", name="Anna", text="новый вопрос")],
        reply=Utterance(author="user2", name="Boris", text="ответ"),
        source=Source(chat_id=1, message_id=1),
    )
    [example] = tokenize_records([long], tokenizer, SEQ2SEQ, PersonaSpec(), 32, 8)
    kept = tokenizer.decode(example.input_ids, skip_special_tokens=False)
    assert len(example.input_ids) == 32
    assert "новый вопрос" in kept and kept.rstrip().endswith("<extra_id_0></s>") and "Продолжи" not in kept
    assert tokenizer.truncation_side == "right"  # the tokenizer itself is left as it was


def test_gradient_checkpointing_trains_the_same_numbers_and_accumulation_counts(tmp_path, tiny_base, tiny_data):
    settings = {"max_steps": 2, "warmup_steps": 0, "batch_size": 8, "lora_dropout": 0.0, "max_source_tokens": 64,
                "gradient_accumulation": 2}
    plain = train([tiny_data], str(tiny_base), tmp_path / "plain", TrainConfig(**settings))
    saving = train([tiny_data], str(tiny_base), tmp_path / "checkpointed",
                   TrainConfig(**settings, gradient_checkpointing=True))
    # The same numbers up to fp32 summation order (the recomputed forward adds in another order:
    # 5e-5 apart at a loss of 7.47 was seen in CI); a broken recomputation is off by far more.
    assert [e["loss"] for e in saving["train_loss"]] == pytest.approx([e["loss"] for e in plain["train_loss"]], rel=1e-4)
    assert saving["config"]["gradient_checkpointing"] is True
    from persona_training.modeling import load_base_model, with_lora

    config = TrainConfig(**settings, gradient_checkpointing=True)
    model = with_lora(load_base_model(str(tiny_base), SEQ2SEQ, config, pick_hardware(config)), SEQ2SEQ, config,
                      str(tiny_base))
    assert model.base_model.model.is_activation_checkpointing  # really on, not just echoed in the report
    assert plain["steps"] == 2 and plain["samples"] == 2 * 8 * 2


def test_a_lora_the_fleet_cannot_serve_is_refused_before_training(tiny_base, tmp_path):
    """LoRA on an embedding trains with PEFT but has no place in the fleet's slots: refused up front."""
    from persona_training.modeling import load_base_model, with_lora

    config = TrainConfig(target_modules=["shared", "q"])
    with pytest.raises(PersonaError, match="target module shared is an embedding: the fleet's slots serve LoRA on linear layers only"):
        with_lora(load_base_model(str(tiny_base), SEQ2SEQ, config, pick_hardware(config)), SEQ2SEQ, config, str(tiny_base))
