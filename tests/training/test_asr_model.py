"""`persona init-asr`: the embedded tiny Whisper recognises the sentences it trained on, through
the production loading path, and says honestly how it does on sentences it never heard."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from persona_training.asr_model import character_error_rate, normalize, synthesize, transcribe
from personafleet import audio
from tests.fixtures.asr import trained_sentences


def test_normalize_and_character_error_rate():
    assert normalize("Всё, ПОМОГЛО!!!  спасибо") == "все помогло спасибо"
    assert character_error_rate(["база"], ["база"]) == 0
    assert character_error_rate(["база"], ["баз"]) == 0.25
    assert character_error_rate(["аб", "вг"], ["", "вг"]) == 0.5


@pytest.mark.slow
def test_the_report_gives_both_error_rates(asr_model):
    report = json.loads((asr_model / "report.json").read_text(encoding="utf-8"))
    assert report["cer"]["trained"] <= 0.15  # measured 0.045 (docs/training.md)
    assert report["cer"]["held_out"] > report["cer"]["trained"]  # it memorises; honest about it
    assert report["loss"]["last"] < report["loss"]["first"] / 10
    sentences = json.loads((asr_model / "sentences.json").read_text(encoding="utf-8"))
    assert not set(sentences["trained"]) & set(sentences["held_out"])
    assert len(trained_sentences(asr_model)) >= 0.75 * len(sentences["trained"])  # heard exactly


@pytest.mark.slow
def test_it_loads_and_hears_through_the_production_classes(asr_model):
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    processor = AutoProcessor.from_pretrained(asr_model)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(asr_model).eval()
    sentences = trained_sentences(asr_model)[:3]
    # Through Opus and back, as a Telegram voice message arrives.
    clips = [audio.decode(audio.encode(synthesize(sentence))) for sentence in sentences]
    assert transcribe(model, processor, clips, language="ru") == sentences


@pytest.mark.slow
def test_hearing_prints_no_library_warning(asr_model, capfd):
    """Issue 26: Whisper's `generate` is called as transformers wants it (the features' attention
    mask, one length bound), batched and with the language detected, and says nothing."""
    import warnings

    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    processor = AutoProcessor.from_pretrained(asr_model)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(asr_model).eval()
    clips = [synthesize(sentence) for sentence in trained_sentences(asr_model)[:2]]
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transcribe(model, processor, clips, language="ru")
        transcribe(model, processor, clips, language=None)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("arguments, message", [
    (["--model", "{tmp}"], "is not a speech-to-text checkpoint"),
    (["--model", "openai/whisper-small", "--bundle"], "bundling needs a local checkpoint"),
    (["--model", "openai/whisper-small", "--language", "r1"], "is not a language code"),
])
def test_package_asr_user_errors_are_one_line(tmp_path, arguments, message):
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    result = subprocess.run([sys.executable, "-m", "persona_cli", "package-asr", *arguments, "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("persona: error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_training_leaves_the_callers_torch_thread_count_alone(tmp_path):
    """It trains on one thread, then gives the process its count back: a different count changes
    float sums, so a later training in the same process would stop reproducing another process's run."""
    import torch

    from persona_training.asr_model import AsrOptions, init_asr
    from persona_training.base_model import DEFAULT_CORPUS

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        init_asr(tmp_path / "asr", [DEFAULT_CORPUS], AsrOptions(steps=1, sentences=3, held_out=1))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
