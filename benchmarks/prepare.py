#!/usr/bin/env python3
"""How fast `persona prepare` turns an export into records, against a naive baseline.

The baseline is how the seed projects parsed exports: for every reply, a linear scan of the
whole message list to find the replied-to message (quadratic in the export's size), then the
time window by walking back. Both run in this process on the same generated exports
(scripts/generate_sample_export.py --messages N) and the script prints one table:

    .venv/bin/python benchmarks/prepare.py                      # 10k, 25k and 100k messages
    .venv/bin/python benchmarks/prepare.py --sizes 100000 --baseline-max 0

The baseline is skipped above --baseline-max messages (it grows with the square of the size);
its time there is estimated from the largest measured size and marked "~".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from persona_training.prepare import PrepareOptions, run_prepare

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "generate_sample_export.py"
URL = re.compile(r"https?://\S+|www\.\S+")


def naive_prepare(path: Path, out: Path, options: PrepareOptions) -> int:
    """The seed-style parser: same rules in spirit, with a linear search for each replied-to message."""
    messages = json.loads(path.read_text(encoding="utf-8"))["messages"]

    def text_of(message: dict) -> str:
        text = message.get("text", "")
        if isinstance(text, list):
            text = "".join(part if isinstance(part, str) else part.get("text", "") for part in text)
        return " ".join(URL.sub(" ", text).split())

    window = options.window_minutes * 60
    seen: set[str] = set()
    records = []
    for position, message in enumerate(messages):
        if message["type"] != "message" or not message.get("from") or "forwarded_from" in message:
            continue
        reply = text_of(message)
        if not reply or len(reply) > options.max_message_chars:
            continue
        context = []
        if "reply_to_message_id" in message:
            for other in messages:  # the linear scan
                if other["id"] == message["reply_to_message_id"]:
                    if text_of(other):
                        context.append(other)
                    break
        now = int(message["date_unixtime"])
        for other in reversed(messages[max(0, position - 50):position]):
            if len(context) >= options.context_turns or now - int(other["date_unixtime"]) > window:
                break
            if other["type"] == "message" and text_of(other) and other not in context:
                context.append(other)
        if not context:
            continue
        record = {
            "context": [{"author": o["from_id"], "name": o.get("from") or "", "text": text_of(o)[: options.max_context_chars]}
                        for o in sorted(context, key=lambda o: o["id"])],
            "reply": {"author": message["from_id"], "name": message["from"], "text": reply},
            "source": {"chat_id": 0, "message_id": message["id"]},
        }
        line = json.dumps(record, ensure_ascii=False)
        if line not in seen:
            seen.add(line)
            records.append(line)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    return len(records)


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 25_000, 100_000])
    parser.add_argument("--baseline-max", type=int, default=25_000, help="largest size the baseline runs on")
    args = parser.parse_args()
    options = PrepareOptions()
    rows = []
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        work = Path(tmp)
        measured: tuple[int, float] | None = None
        for size in args.sizes:
            export = work / f"export-{size}.json"
            subprocess.run([sys.executable, GENERATOR, "--messages", str(size), "--out", export], check=True, capture_output=True)
            with contextlib.redirect_stdout(io.StringIO()):
                seconds, stats = timed(run_prepare, [export], work / f"ours-{size}", options)
            records = stats.records["train"] + stats.records["val"]
            if size <= args.baseline_max:
                baseline, _ = timed(naive_prepare, export, work / f"naive-{size}", options)
                measured = (size, baseline)
                baseline_cell = f"{baseline:.2f}"
            elif measured:
                baseline = measured[1] * (size / measured[0]) ** 2
                baseline_cell = f"~{baseline:.0f}"
            else:
                baseline, baseline_cell = float("nan"), "skipped"
            rows.append((size, export.stat().st_size / 1e6, records, seconds, size / seconds, baseline_cell, baseline / seconds))
    print(f"persona prepare vs naive baseline (window {options.window_minutes:g} min, {options.context_turns} turns)")
    print(f"| {'messages':>8} | {'MB':>5} | {'records':>7} | {'prepare s':>9} | {'msgs/s':>8} | {'baseline s':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 10}|{'-' * 7}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 12}|{'-' * 10}|")
    for size, megabytes, records, seconds, rate, baseline_cell, speedup in rows:
        print(f"| {size:>8} | {megabytes:>5.1f} | {records:>7} | {seconds:>9.2f} | {rate:>8.0f} | {baseline_cell:>10} | {speedup:>7.0f}x |")


if __name__ == "__main__":
    main()
