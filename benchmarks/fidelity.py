#!/usr/bin/env python3
"""Persona fidelity (issue 24): does the trained persona sound like its author, what does the
evaluation cost, and what does the reply filter cost?

1. Fidelity per author: a tiny base (`persona init-base` on both exports), then for each author a
   `persona prepare --persona-id` and a real `persona train` run, which ends with the fidelity
   evaluation: the share of replies (serving defaults and greedy) the authorship classifier reads
   as the author's, for the trained adapter against the base alone (the floor, the naive baseline)
   and the author's real held-out replies (the ceiling), with the classifier's balanced accuracy
   on real held-out messages beside it. Authors: Борис of the sample export, and the three authors
   of a larger synthetic export made here (tests/training/styled_export.py: short lower-case
   Russian, long formal Russian, shouted English with emoji). The goal is stated as a margin:
   trained - base >= MARGIN for every author.
2. Cost of `persona eval` for 200 held-out prompts (tiny model, CPU): the evaluation as built
   (batched generation, prompts sorted by length) against the naive loop (one prompt per
   `generate`), on the same prompts and model; the naive loop is timed on a sample and scaled.
3. Reply filter: p50/p99 of `ReplyFilter.check` per reply for 100 rules (60 blocked words, 36
   patterns, 4 PII kinds) over real and generated replies, against the naive filter (the standard
   library's `re`, every word and pattern its own expression, searched one after another; it has
   no time limit per pattern, which the filter pays about 2 us per pattern for).

    flock /work/heavy.lock .venv/bin/python benchmarks/fidelity.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/fidelity.py --quick                            # make bench

All figures are tiny-model (a ~1M-parameter T5, CPU). Writes benchmarks/results/fidelity.json and
fidelity.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # the synthetic export lives with the tests
from tests.training.styled_export import AUTHORS, write_styled_export  # noqa: E402

SAMPLE = ROOT / "examples" / "sample-export" / "result.json"
SAMPLE_AUTHOR = "user5172839406"
MARGIN = 0.2  # trained - base, in authorship share, that counts as "sounds more like the author"
FILTER_CHECKS = 20_000


def train_author(base: Path, export: Path, author: str, work: Path, steps: int) -> dict:
    """prepare --persona-id AUTHOR, then `persona train` (which judges its fidelity at the end)."""
    from persona_training.config import TrainConfig
    from persona_training.prepare import PrepareOptions, run_prepare
    from persona_training.train import train

    data = work / f"data-{author}"
    run_prepare([export], data, PrepareOptions(persona_id=author))
    config = TrainConfig(max_steps=steps, warmup_steps=min(20, steps // 2), batch_size=16, eval_every=10_000,
                         checkpoint_every=10_000, max_source_tokens=128, fidelity_prompts=200)
    report = train([data], str(base), work / f"run-{author}", config)
    return {"data": data, "run": work / f"run-{author}", "report": report}


def fidelity_row(label: str, author: str, report: dict) -> dict:
    block = report["fidelity"]
    authorship = block["authorship"]
    return {
        "export": label, "author": author, "prompts": block["prompts"],
        "base": authorship["base"], "trained": authorship["adapter"], "real": authorship["real"],
        "classifier_balanced_accuracy": authorship["classifier"]["held_out"].get("balanced_accuracy"),
        "classifier_messages": authorship["classifier"]["held_out"]["messages"],
        "margin": round(authorship["adapter"]["serving"] - authorship["base"]["serving"], 4),
        "eval_seconds": block["seconds"], "leaks": block["leaks"]["count"],
        "length_distance": {"base": block["shape"]["base"]["serving"]["length_distance"],
                            "trained": block["shape"]["adapter"]["serving"]["length_distance"]},
        "trained_shape": {mode: {key: block["shape"]["adapter"][mode][key] for key in ("mean_length", "empty", "repetition")}
                          for mode in ("greedy", "serving")},
        "eval_loss": {"before": report["eval"]["before"]["loss"], "after": report["eval"]["after"]["loss"]},
    }


def eval_cost(base: Path, trained: dict, naive_sample: int) -> dict:
    """`persona eval` as built (wall time, model load included) vs the naive one-prompt loop."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from personafleet.family import load_base, load_family
    from personafleet.persona import PersonaSpec
    from persona_training.data import load_dialogues, prompt_for
    from persona_training.eval_run import evaluate_run
    from persona_training.fidelity import generate, held_out, modes, persona_author

    started = time.perf_counter()
    block = evaluate_run(trained["run"], [trained["data"]], prompts=200)
    built = time.perf_counter() - started

    dialogues = load_dialogues([trained["data"]])
    persona = PersonaSpec.model_validate_json((trained["run"] / "persona.json").read_text(encoding="utf-8"))
    records = held_out(dialogues, persona_author(dialogues), 200)[:naive_sample]
    family = load_family(str(base))
    tokenizer = family.prepare_tokenizer(AutoTokenizer.from_pretrained(trained["run"]), str(base))
    prompts = [prompt_for(record, persona, chat=family.chat_formatter(tokenizer)) for record in records]
    model = PeftModel.from_pretrained(load_base(family, str(base)), trained["run"]).eval()
    started = time.perf_counter()
    for options in modes(persona).values():
        for prompt in prompts:
            generate(model, tokenizer, family, [prompt], options, max_source_tokens=128, device="cpu")
        with model.disable_adapter():
            for prompt in prompts:
                generate(model, tokenizer, family, [prompt], options, max_source_tokens=128, device="cpu")
    naive = (time.perf_counter() - started) * block["prompts"] / len(prompts)
    return {"prompts": block["prompts"], "persona_eval_seconds": round(built, 2),
            "evaluation_seconds": block["seconds"], "naive_generation_seconds_scaled": round(naive, 2),
            "naive_sample": len(prompts), "torch_threads": torch.get_num_threads()}


def filter_cost(replies: list[str]) -> dict:
    """p50/p99 per reply of the filter as built and of the naive one, 100 rules each."""
    from persona_serving.reply_filter import ReplyFilter
    from personafleet.pii import PATTERNS, luhn_valid
    from personafleet.reply_rules import ReplyFilterRules

    words = [f"слово{i}" for i in range(50)] + ["дурак", "идиот", "плохое слово", "кредит", "казино", "ставки",
                                                 "наркотики", "оружие", "пароль", "логин"]
    patterns = [{"name": f"p{i}", "regex": rf"\b(?:заказ|order)\s*№?\s*{i}\d{{3,}}\b"} for i in range(30)] + [
        {"name": "money", "regex": r"\d+\s*(?:руб|₽|\$)"}, {"name": "ip", "regex": r"\b\d{1,3}(?:\.\d{1,3}){3}\b"},
        {"name": "token", "regex": r"\b[A-Za-z0-9_-]{32,}\b"}, {"name": "iban", "regex": r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b"},
        {"name": "free", "regex": r"\b(?:бесплатно|free)\s+\w+"}, {"name": "promo", "regex": r"промокод\s+\w+"}]
    rules = ReplyFilterRules(blocklist=words, patterns=patterns, pii=["phone", "email", "card", "url"])
    assert len(rules.blocklist) + len(rules.patterns) + len(rules.pii) == 100
    built = ReplyFilter(rules)

    # What one writes first: the standard library's `re`, one expression per word and per pattern.
    naive_rules = [re.compile(rf"(?<!\w){re.escape(w)}(?!\w)", re.IGNORECASE) for w in words] + \
                  [re.compile(p["regex"], re.IGNORECASE) for p in patterns]

    def naive(text: str) -> bool:
        if any(rule.search(text) for rule in naive_rules):
            return True
        return any((kind != "card" or luhn_valid(re.sub(r"\D", "", m.group()))) for kind, pattern in PATTERNS.items()
                   for m in pattern.finditer(text))

    results = {}
    for name, check in (("filter", built.check), ("naive", naive)):
        times = []
        for i in range(FILTER_CHECKS):
            text = replies[i % len(replies)]
            started = time.perf_counter()
            check(text)
            times.append(time.perf_counter() - started)
        times.sort()
        results[name] = {"p50_ms": round(statistics.median(times) * 1000, 4),
                         "p99_ms": round(times[int(0.99 * len(times))] * 1000, 4)}
    blocked = sum(built.check(text) is not None for text in replies)
    return results | {"rules": 100, "replies": len(replies), "mean_reply_chars": round(statistics.mean(map(len, replies)), 1),
                      "blocked_replies": blocked}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    labels = [f"{row['export']}\n{row['author']}" for row in rows]
    width = 0.2
    for offset, (key, name, color) in enumerate((("base", "base (floor)", "tab:gray"),
                                                 ("trained", "trained, serving defaults", "tab:blue"),
                                                 ("trained_greedy", "trained, greedy", "tab:cyan"),
                                                 ("real", "real replies (ceiling)", "tab:green"))):
        values = [row["base"]["serving"] if key == "base" else row["trained"]["serving"] if key == "trained"
                  else row["trained"]["greedy"] if key == "trained_greedy" else row["real"] for row in rows]
        axes.bar([i + (offset - 1.5) * width for i in range(len(rows))], values, width, label=name, color=color)
    axes.set_xticks(range(len(rows)), labels)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("share of replies read as the author")
    axes.set_title("persona fidelity (tiny model): base vs trained vs real, per author")
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small base, few steps, one synthetic author (make bench)")
    parser.add_argument("--steps", type=int, default=300, help="LoRA steps per author")
    parser.add_argument("--base-steps", type=int, default=400, help="pre-training steps of the tiny base")
    parser.add_argument("--messages", type=int, default=6000, help="messages of the synthetic three-author export")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where fidelity.json and fidelity.png go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from persona_training.base_model import BaseModelOptions, init_base

    steps, messages = (20, 2400) if args.quick else (args.steps, args.messages)
    with tempfile.TemporaryDirectory(prefix="fidelity-bench-") as tmp:
        work = Path(tmp)
        styled = write_styled_export(work / "styled" / "result.json", messages=messages)
        options = (BaseModelOptions(d_model=32, d_ff=64, num_layers=1, num_heads=2, steps=30) if args.quick
                   else BaseModelOptions(steps=args.base_steps))
        base = work / "base"
        init_base(base, [SAMPLE, styled], options)
        authors = [("sample", SAMPLE, SAMPLE_AUTHOR)] + [("synthetic", styled, a) for a in AUTHORS]
        if args.quick:
            authors = authors[1:2]
        rows, trained = [], {}
        for label, export, author in authors:
            trained[author] = train_author(base, export, author, work, steps)
            rows.append(fidelity_row(label, author, trained[author]["report"]))
        # Timed on the first author's run: in full settings the sample export, whose replies are the longest.
        cost = eval_cost(base, trained[authors[0][2]], naive_sample=8 if args.quick else 40)
        replies = [json.loads(line)[key] if key == "real" else json.loads(line)["adapter"]["serving"]
                   for t in trained.values()
                   for line in (t["run"] / "fidelity_samples.jsonl").read_text(encoding="utf-8").splitlines()
                   for key in ("real", "adapter")]
        filtering = filter_cost(replies)

    print(f"\nFidelity: share of replies the authorship classifier reads as the author ({'quick' if args.quick else 'full'}"
          f" settings, {steps} LoRA steps, tiny model on CPU); goal: trained - base >= {MARGIN} for every author\n")
    print("| export | author | prompts | base | trained (serving / greedy) | real | margin | classifier bal. acc. | eval s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['export']} | {row['author']} | {row['prompts']} | {row['base']['serving']:.2f} | "
              f"{row['trained']['serving']:.2f} / {row['trained']['greedy']:.2f} | {row['real']:.2f} | "
              f"{row['margin']:+.2f} {'ok' if row['margin'] >= MARGIN else 'MISSED'} | "
              f"{row['classifier_balanced_accuracy']} ({row['classifier_messages']}) | {row['eval_seconds']:.1f} |")
    print(f"\npersona eval, {cost['prompts']} prompts x 4 reply sets: {cost['persona_eval_seconds']:.1f} s wall "
          f"(evaluation alone {cost['evaluation_seconds']:.1f} s; goal < 60 s); naive one-prompt-per-generate "
          f"generation: {cost['naive_generation_seconds_scaled']:.1f} s (timed on {cost['naive_sample']} prompts, scaled)")
    print(f"\nReply filter, {filtering['rules']} rules, {filtering['replies']} replies "
          f"(mean {filtering['mean_reply_chars']} chars, {filtering['blocked_replies']} blocked): "
          f"p50 {filtering['filter']['p50_ms']:.3f} ms, p99 {filtering['filter']['p99_ms']:.3f} ms (goal p99 < 1 ms); "
          f"naive: p50 {filtering['naive']['p50_ms']:.3f} ms, p99 {filtering['naive']['p99_ms']:.3f} ms")

    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (args.results / f"fidelity{suffix}.json").write_text(json.dumps({
        "settings": {"quick": args.quick, "steps": steps, "synthetic_messages": messages, "margin": MARGIN,
                     "machine": platform.platform(), "python": platform.python_version()},
        "fidelity": rows, "eval_cost": cost, "filter": filtering,
    }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot(rows, args.results / f"fidelity{suffix}.png")
    print(f"\nwrote {args.results / f'fidelity{suffix}.json'} and fidelity{suffix}.png")


if __name__ == "__main__":
    main()
