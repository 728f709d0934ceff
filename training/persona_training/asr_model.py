"""`persona init-asr`: a tiny Whisper that really recognises Russian speech, for machines without a hub.

Production serves a real Whisper checkpoint (see docs/serving.md); here nothing can be downloaded,
so, like `init-base`, the project makes its own model with the same artefacts and the same loading
path: `espeak-ng` reads sentences of the sample chat aloud (several speeds and pitches, some passed
through Opus like a Telegram voice note), and a `WhisperForConditionalGeneration` with small
dimensions learns to transcribe them. The tokenizer is a `WhisperTokenizer` (byte-level BPE whose
merges make each Cyrillic letter one token, with Whisper's special tokens in Whisper's order so
`language="ru"` finds `<|ru|>`), the features a `WhisperFeatureExtractor` with a 10 s window.
Everything downstream loads it with `AutoProcessor` + `AutoModelForSpeechSeq2Seq.from_pretrained`.

It recognises the sentences it was trained on, not Russian at large: report.json gives the
character error rate on both, and the held-out figure is poor by design of its size.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from persona_training.base_model import descend
from personafleet import audio
from personafleet.errors import PersonaError
from personafleet.whisper import transcribe_windows

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
SENTENCES_FILE = "sentences.json"
LANGUAGE = "ru"
# Sentences espeak-ng reads well as Russian: Cyrillic words and light punctuation only.
SPEAKABLE = re.compile(r"[А-Яа-яЁё ,.?!\-]+")
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
# (speed in words per minute, pitch 0-99): the first is espeak-ng's default voice, the one tests use.
VOICES = ((175, 50), (150, 40), (200, 60), (165, 70), (185, 30), (140, 55))


class AsrOptions(BaseModel):
    """Size of the tiny Whisper and its training; the defaults take ~2-3 min on 2 CPU cores."""

    model_config = ConfigDict(extra="forbid")

    sentences: int = Field(20, ge=2, description="most sentences taken from the corpus")
    held_out: int = Field(4, ge=1, description="sentences kept out of training, for the honest CER")
    d_model: int = Field(96, ge=16)
    layers: int = Field(2, ge=1, description="encoder and decoder layers (each)")
    heads: int = Field(4, ge=1)
    ffn: int = Field(256, ge=16)
    chunk_seconds: int = Field(5, ge=2, le=30, description="the feature extractor's window")
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    seed: int = 13


def normalize(text: str) -> str:
    """What the model is asked to write and what CER compares: lower case, words, single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower().replace("ё", "е")).split())


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Edit distance over reference length, both normalised, summed over the set."""
    errors = total = 0
    for reference, hypothesis in zip(references, hypotheses):
        reference, hypothesis = normalize(reference), normalize(hypothesis)
        previous = list(range(len(hypothesis) + 1))
        for i, r in enumerate(reference, 1):
            current = [i]
            for j, h in enumerate(hypothesis, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
            previous = current
        errors += previous[-1]
        total += max(1, len(reference))
    return errors / max(1, total)


def speakable_sentences(exports: Sequence[Path], limit: int, seed: int) -> list[str]:
    """Distinct short all-Cyrillic messages of the corpus, normalised, in a seeded order."""
    from persona_training.base_model import corpus_texts

    found = sorted({normalize(text) for text in corpus_texts(exports) if 10 <= len(text) <= 50 and SPEAKABLE.fullmatch(text)})
    random.Random(seed).shuffle(found)
    return found[:limit]


def synthesize(text: str, speed: int = VOICES[0][0], pitch: int = VOICES[0][1]) -> audio.Audio:
    """`text` read by espeak-ng's Russian voice, as 16 kHz mono."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise PersonaError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng; scripts/setup.sh does it as root)")
    result = subprocess.run([espeak, "-v", LANGUAGE, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                            capture_output=True, check=False, timeout=60)
    if result.returncode != 0:
        raise PersonaError(f"espeak-ng failed: {result.stderr.decode(errors='replace').strip()[:200]}")
    return audio.decode(result.stdout)


def build_tokenizer():
    """Byte-level BPE with one merge per Cyrillic letter, and Whisper's special tokens in order."""
    from transformers import WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: i for i, b in enumerate(sorted(byte_chars))}
    merges = []
    for letter in CYRILLIC:
        first, second = (byte_chars[b] for b in letter.encode())
        merges.append((first, second))
        vocab[first + second] = len(vocab)
    specials = ["<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, additional_special_tokens=specials)
    tokenizer.set_prefix_tokens(language=LANGUAGE, task="transcribe", predict_timestamps=False)
    return tokenizer


def build_model(tokenizer, options: AsrOptions):
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    ids = tokenizer.convert_tokens_to_ids
    frames = options.chunk_seconds * audio.SAMPLE_RATE // 160  # the feature extractor's hop
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=options.d_model,
        encoder_layers=options.layers, decoder_layers=options.layers,
        encoder_attention_heads=options.heads, decoder_attention_heads=options.heads,
        encoder_ffn_dim=options.ffn, decoder_ffn_dim=options.ffn,
        max_source_positions=frames // 2, max_target_positions=128,
        pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=ids("<|startoftranscript|>"), dropout=0.0,
    )
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config
    generation.lang_to_id = {f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES}
    generation.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    generation.is_multilingual = True
    generation.no_timestamps_token_id = ids("<|notimestamps|>")
    generation.decoder_start_token_id = config.decoder_start_token_id
    generation.pad_token_id = generation.eos_token_id = tokenizer.eos_token_id
    generation.max_length = config.max_target_positions
    generation.forced_decoder_ids = None
    generation.begin_suppress_tokens = [tokenizer.eos_token_id]
    # Not "derived from the model config": from_pretrained would rebuild it and drop the above.
    generation._from_model_config = False
    return model


def transcribe(model, processor, clips: Sequence[audio.Audio], language: str = LANGUAGE) -> list[str]:
    """Greedy transcripts of clips that fit one window (what the report and the tests measure)."""
    return transcribe_windows(model, processor, [clip.samples for clip in clips], language=language, max_tokens=96)


def init_asr(out: Path, exports: Sequence[Path], options: AsrOptions | None = None) -> dict:
    """Synthesise, train, evaluate and save the tiny Whisper into `out`; returns the report."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    options = options or AsrOptions()
    started = time.monotonic()
    sentences = speakable_sentences(exports, options.sentences, options.seed)
    if len(sentences) <= options.held_out:
        raise PersonaError(f"only {len(sentences)} speakable sentences in the corpus; need more than {options.held_out}")
    held_out, trained = sentences[: options.held_out], sentences[options.held_out:]

    tokenizer = build_tokenizer()
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=audio.SAMPLE_RATE, chunk_length=options.chunk_seconds)
    processor = WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    clips, targets = [], []
    for text in tqdm(trained, desc="synthesising speech", unit="sentence", mininterval=1.0):
        for number, (speed, pitch) in enumerate(VOICES):
            clip = synthesize(text, speed, pitch)
            # Every other voice also as Telegram delivers it: through Opus and back.
            clips.append(audio.decode(audio.encode(clip)) if number % 2 else clip)
            targets.append(text)
    too_long = max(clip.seconds for clip in clips)
    if too_long > options.chunk_seconds:
        raise PersonaError(f"a synthesised sentence lasts {too_long:.1f} s, longer than the {options.chunk_seconds} s window")
    features = torch.from_numpy(np.stack(
        extractor([clip.samples for clip in clips], sampling_rate=audio.SAMPLE_RATE, return_tensors="np").input_features
    ))
    # Labels: <|ru|><|transcribe|><|notimestamps|> text <|endoftext|>; the model prepends the start token.
    encoded = [tokenizer(text).input_ids[1:] for text in targets]
    width = max(map(len, encoded))
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for row, ids in enumerate(encoded):
        labels[row, : len(ids)] = torch.tensor(ids)

    # One thread: matrices this small gain nothing from more, and on a shared machine extra
    # OpenMP threads spin (measured 4x slower per step with 2 threads under load). Only while it
    # trains: the caller's thread count is its own (a different count changes float sums, and a
    # later training in the same process would no longer reproduce a run in another one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, losses = _train(tokenizer, features, labels, len(clips), options)
        model.eval()

        # Evaluated on the default voice through Opus: what a test's voice message sounds like.
        def heard(texts: list[str]) -> list[str]:
            return transcribe(model, processor, [audio.decode(audio.encode(synthesize(t))) for t in texts])

        trained_heard, held_out_heard = heard(trained), heard(held_out)
    finally:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tail = losses[-max(1, len(losses) // 10):]
    report = {
        "language": LANGUAGE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "clips": len(clips),
        "audio_seconds": round(sum(clip.seconds for clip in clips), 1),
        "loss": {"first": losses[0], "last": sum(tail) / len(tail)},
        "cer": {"trained": character_error_rate(trained, trained_heard),
                "held_out": character_error_rate(held_out, held_out_heard)},
        "heard": {"trained": dict(zip(trained, trained_heard)), "held_out": dict(zip(held_out, held_out_heard))},
        "options": options.model_dump(),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / SENTENCES_FILE).write_text(json.dumps({"trained": trained, "held_out": held_out}, ensure_ascii=False, indent=2) + "\n",
                                      encoding="utf-8")
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("tiny whisper saved to %s: CER %.3f on trained sentences, %.3f held out (%.0f s)",
             out, report["cer"]["trained"], report["cer"]["held_out"], report["seconds"])
    return report


def _train(tokenizer: Any, features: Any, labels: Any, clips: int, options: AsrOptions) -> tuple[Any, list[float]]:
    """The training loop: random batches of the synthesised clips; (model, loss per step)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    torch.manual_seed(options.seed)
    model = build_model(tokenizer, options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.01)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=options.steps // 10, num_training_steps=options.steps)
    generator = torch.Generator().manual_seed(options.seed)
    model.train()
    losses: list[float] = []
    progress = tqdm(range(options.steps), desc="training tiny whisper", unit="step", mininterval=1.0)
    for _ in progress:
        batch = torch.randint(clips, (options.batch_size,), generator=generator)
        rows = labels[batch]
        rows = rows[:, : int((rows != -100).sum(dim=1).max())]
        losses.append(descend(model, model(input_features=features[batch], labels=rows).loss, optimizer, scheduler))
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    return model, losses
