#!/usr/bin/env python3
"""ASR latency per audio second: the handler's batched transcription against a naive baseline.

Both transcribe the same voice messages (sentences `persona init-asr` trained on, read by
espeak-ng, through Opus and back, like Telegram's) with the same model in this process:

- batched (`persona_serving.asr.Transcriber`, what the ASR handler runs): every window of a
  TorchServe batch of N requests goes through ONE `generate`, language forced;
- naive: what a per-request handler would do: feature extraction and `generate` for each
  request on its own, one after the other.

The figure is wall time over the batch's audio seconds (lower is better; < 1 keeps up with
speech). Each configuration is run `--repeats` times after one warm-up; the median is shown.

    .venv/bin/python benchmarks/asr.py --model .persona/asr      # the embedded tiny Whisper
    .venv/bin/python benchmarks/asr.py --model openai/whisper-large-v3-turbo --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from persona_serving.asr import Clip, Transcriber
from persona_serving.handler import pick_device
from persona_training.asr_model import character_error_rate, synthesize
from personafleet import audio

ROOT = Path(__file__).resolve().parent.parent


def naive(transcriber: Transcriber, clips: list[Clip]) -> list[str]:
    """One request at a time: features and `generate` per clip."""
    return [transcriber.transcribe([clip])[0] for clip in clips]


def timed(function, *args) -> tuple[float, list[str]]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".persona" / "asr"), help="checkpoint directory or hub id")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="requests per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "asr.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = pick_device(0 if args.device == "cuda" else None)
    transcriber = Transcriber(args.model, device, dtype, max_new_tokens=128)
    sentences_file = Path(args.model) / "sentences.json"
    sentences = (json.loads(sentences_file.read_text(encoding="utf-8"))["trained"] if sentences_file.is_file()
                 else ["база тормозит после миграции", "у нас нода отвалилась что делать"])
    pool = [Clip(audio.decode(audio.encode(synthesize(sentence))), "ru") for sentence in sentences]

    rows = []
    for size in args.batches:
        clips = [pool[i % len(pool)] for i in range(size)]
        seconds = sum(clip.audio.seconds for clip in clips)
        results = {}
        for name, method in (("naive", naive), ("batched", Transcriber.transcribe)):
            runs = [timed(method, transcriber, clips) for _ in range(args.repeats + 1)][1:]
            wall = statistics.median(run[0] for run in runs)
            cer = character_error_rate([sentences[i % len(pool)] for i in range(size)], runs[0][1])
            results[name] = {"wall_s": round(wall, 3), "per_audio_second": round(wall / seconds, 4), "cer": round(cer, 3)}
        rows.append({"batch": size, "audio_s": round(seconds, 2), **results,
                     "speedup": round(results["naive"]["wall_s"] / results["batched"]["wall_s"], 2)})

    print(f"model {args.model} on {device} ({dtype}), {args.threads} thread(s), median of {args.repeats}")
    print("| requests | audio s | naive s/audio s | batched s/audio s | speed-up | CER |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['batch']} | {row['audio_s']} | {row['naive']['per_audio_second']} | "
              f"{row['batched']['per_audio_second']} | {row['speedup']}x | {row['batched']['cer']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "device": str(device), "dtype": str(dtype),
                                    "threads": args.threads, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
