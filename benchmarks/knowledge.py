#!/usr/bin/env python3
"""Persona knowledge (issue 14): retrieval latency, and whether the model uses the facts.

1. Retrieval: `personafleet.knowledge.retrieve` (BM25 from bm25s over Snowball stems) on 1,000
   and 10,000 facts, queried with the contexts of the sample's dialogue records; p50/p99 per call
   (goals: p99 < 2 ms and < 10 ms). Baseline in the same run: ranking by shared words, a Python
   loop over the facts with no index and no stemming. Both are also scored on the 32 questions of
   the `--facts` sample (is the fact the answer states ranked first?).
2. Use of facts: the `--facts` variant of the sample export (Борис also answers questions about
   himself with the facts of his knowledge file) -> `persona prepare` -> a tiny base -> LoRA trained
   twice, without and with `--knowledge`; held-out perplexity on the validation replies that state
   a fact, each model with its own prompts, and greedy replies to a few questions side by side.

    .venv/bin/python benchmarks/knowledge.py                 # both parts (~2-4 minutes on 2 cores)
    .venv/bin/python benchmarks/knowledge.py --retrieval-only

Writes benchmarks/results/knowledge.json and knowledge.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from personafleet.knowledge import Knowledge, KnowledgeSource, build_knowledge, retrieve
from personafleet.persona import PersonaSpec
from personafleet.prompt import Turn, record_turns
from personafleet.records import DialogueRecord, Source, Utterance

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "scripts"))
from generate_sample_export import BORIS, PERSONAL, facts_markdown, generate, render  # noqa: E402

QUERIES = 2000
SIDE_BY_SIDE = ["ты где учился?", "какой у тебя ноутбук?", "как зовут твоего кота?", "какой сериал смотришь?",
                "ты из какого города?"]


# --- 1. retrieval -----------------------------------------------------------------------------
def synthetic_facts(count: int, words: Sequence[str], seed: int = 7) -> list[str]:
    """`count` distinct facts of 5-11 words drawn from the sample's vocabulary (Zipf-like: real
    facts share common words and differ in rare ones)."""
    rng = random.Random(seed)
    weights = [1 / (rank + 10) for rank in range(len(words))]
    facts: dict[str, None] = {}
    while len(facts) < count:
        fact = " ".join(rng.choices(words, weights, k=rng.randint(5, 11)))
        facts[fact[0].upper() + fact[1:]] = None
    return list(facts)


def word_overlap(facts: Sequence[str], top_k: int = 3) -> Callable[[Sequence[Turn]], list[str]]:
    """The naive baseline: facts ranked by how many of the conversation's words they contain."""
    fact_words = [set(re.findall(r"\w+", fact.lower())) for fact in facts]

    def rank(turns: Sequence[Turn]) -> list[str]:
        query = {w for turn in turns[-3:] for w in re.findall(r"\w+", turn.text.lower())}
        scored = [(len(query & words), -i) for i, words in enumerate(fact_words)]
        best = sorted((s for s in scored if s[0] > 0), reverse=True)[:top_k]
        return [facts[-i] for _, i in best]

    return rank


def latency(pick: Callable[[Sequence[Turn]], list[str]], contexts: Sequence[list[Turn]]) -> dict[str, float]:
    """Wall-clock and CPU milliseconds per call. On a shared machine the wall-clock tail is other
    processes' time slices; the CPU time is what a call costs."""
    pick(contexts[0])  # the index is built on first use: not part of a request
    wall, cpu = [], []
    for context in contexts:
        started, started_cpu = time.perf_counter(), time.thread_time()
        pick(context)
        cpu.append((time.thread_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    p99 = lambda values: sorted(values)[int(len(values) * 0.99) - 1]  # noqa: E731
    return {"p50_ms": statistics.median(wall), "p99_ms": p99(wall), "max_ms": max(wall),
            "cpu_p50_ms": statistics.median(cpu), "cpu_p99_ms": p99(cpu)}


def fact_hits(pick: Callable[[Sequence[Turn]], list[str]]) -> int:
    """How many of the `--facts` sample's questions get their own fact ranked first."""
    return sum(bool(found := pick([Turn(role="user", text=ask)])) and found[0] == fact
               for asks, fact, _ in PERSONAL for ask in asks)


def retrieval_part(records: Sequence[DialogueRecord], facts_file: Path) -> dict:
    contexts = [record_turns(r) for r in records]
    contexts = (contexts * (QUERIES // len(contexts) + 1))[:QUERIES]
    vocabulary = sorted({w for r in records for u in r.context for w in re.findall(r"[а-яёa-z]{3,}", u.text.lower())})
    random.Random(3).shuffle(vocabulary)
    rows = {}
    for count in (1_000, 10_000):
        facts = synthetic_facts(count, vocabulary)
        started = time.thread_time()
        knowledge = build_knowledge([], facts)
        retrieve(knowledge, contexts[0])
        build_s = time.thread_time() - started
        rows[count] = {"ours": {**latency(lambda turns: retrieve(knowledge, turns), contexts), "index_build_s": build_s},
                       "baseline": latency(word_overlap(facts), contexts)}
    sample = build_knowledge([facts_file])
    questions = sum(len(asks) for asks, _, _ in PERSONAL)
    hits = {"questions": questions, "ours": fact_hits(lambda turns: retrieve(sample, turns)),
            "baseline": fact_hits(word_overlap(sample.facts))}
    return {"latency": rows, "fact_questions": hits, "queries": len(contexts)}


# --- 2. use of facts ---------------------------------------------------------------------------
def states_a_fact(record: DialogueRecord) -> bool:
    return any(say in record.reply.text for _, _, say in PERSONAL)


def held_out_perplexity(run: Path, base: Path, records: Sequence[DialogueRecord], knowledge: Knowledge | None,
                        config) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from persona_training.data import prompt_for, tokenize_records
    from persona_training.evaluate import evaluate
    from persona_training.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(run))
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base), run).eval()
    examples = tokenize_records(records, tokenizer, config.persona, config.max_source_tokens,
                                config.max_target_tokens, knowledge)
    result = evaluate(model, examples, 32, "cpu", contextlib.nullcontext)
    replies = {}
    for question in SIDE_BY_SIDE:
        record = DialogueRecord(context=[Utterance(author="user1", name="x", text=question)],
                                reply=Utterance(author=BORIS.from_id, name="Борис", text="-"),
                                source=Source(chat_id=0, message_id=0))
        encoded = tokenizer([prompt_for(record, config.persona, knowledge)], return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=40, do_sample=False, num_beams=1,
                                    repetition_penalty=config.persona.generation.repetition_penalty)
        replies[question] = tokenizer.decode(output[0][1:], skip_special_tokens=True).strip()
    return {**result, "records": len(records), "replies": replies}


def use_part(work: Path, export: Path, facts_file: Path, data: Path, base_steps: int, epochs: float) -> dict:
    from persona_training.base_model import BaseModelOptions, init_base
    from persona_training.config import TrainConfig
    from persona_training.data import load_dialogues
    from persona_training.train import train

    base = work / "base"
    started = time.perf_counter()
    init_base(base, [export], BaseModelOptions(steps=base_steps))
    base_s = time.perf_counter() - started
    dialogues = load_dialogues([data])
    fact_records = [r for r in dialogues.val if states_a_fact(r)]
    seen = {say for r in dialogues.train for _, _, say in PERSONAL if say in r.reply.text}
    knowledge = build_knowledge([facts_file])
    results = {"base_seconds": round(base_s, 1), "val_records": len(dialogues.val),
               "val_fact_records": len(fact_records), "facts": len(knowledge.facts),
               "facts_stated_in_training": len(seen)}
    for name, source in (("without", None), ("with", KnowledgeSource(files=[facts_file]))):
        config = TrainConfig(persona=PersonaSpec(), epochs=epochs, eval_every=10**6, checkpoint_every=10**6,
                             knowledge=source)
        report = train([data], str(base), work / name, config)
        results[name] = {
            "train_seconds": report["train_seconds"], "steps": report["steps"],
            "val_perplexity": report["eval"]["after"]["perplexity"],
            "fact_replies": held_out_perplexity(work / name, base, fact_records,
                                                knowledge if source else None, config),
        }
    return results


# --- output ------------------------------------------------------------------------------------
def print_tables(results: dict) -> None:
    retrieval = results["retrieval"]
    print(f"\nretrieval, {retrieval['queries']} queries (contexts of the sample's records), one call each:\n")
    print("| facts | method | p50 ms | p99 ms | max ms | CPU p50 ms | CPU p99 ms | index build, CPU s |")
    print("| ----: | ------ | -----: | -----: | -----: | ---------: | ---------: | -----------------: |")
    for count, row in retrieval["latency"].items():
        for name, cells in (("retrieve (bm25s + PyStemmer)", row["ours"]), ("word overlap, Python loop", row["baseline"])):
            build = f"{cells['index_build_s']:.2f}" if "index_build_s" in cells else "-"
            print(f"| {int(count):,} | {name} | {cells['p50_ms']:.3f} | {cells['p99_ms']:.3f} | {cells['max_ms']:.2f} | "
                  f"{cells['cpu_p50_ms']:.3f} | {cells['cpu_p99_ms']:.3f} | {build} |")
    hits = retrieval["fact_questions"]
    print(f"\nfact questions of the --facts sample answered by their fact ranked first: "
          f"retrieve {hits['ours']}/{hits['questions']}, word overlap {hits['baseline']}/{hits['questions']}")
    use = results.get("use")
    if not use:
        return
    print(f"\nuse of facts: {use['facts']} facts, {use['val_fact_records']} held-out replies that state one "
          f"(of {use['val_records']} validation records); {use['facts_stated_in_training']} facts are "
          f"also stated in training replies\n")
    print("| training | held-out perplexity, fact replies | all validation | train s |")
    print("| -------- | --------------------------------: | -------------: | ------: |")
    for name in ("without", "with"):
        row = use[name]
        print(f"| {name} knowledge | {row['fact_replies']['perplexity']:.2f} | {row['val_perplexity']:.2f} | "
              f"{row['train_seconds']:.1f} |")
    print("\n| question | without knowledge | with knowledge |")
    print("| -------- | ----------------- | -------------- |")
    for question in SIDE_BY_SIDE:
        print(f"| {question} | {use['without']['fact_replies']['replies'][question]} | "
              f"{use['with']['fact_replies']['replies'][question]} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use = results.get("use")
    figure, axes = plt.subplots(1, 2 if use else 1, figsize=(10 if use else 5, 4), squeeze=False)
    latency_axis = axes[0][0]
    counts = list(results["retrieval"]["latency"])
    for offset, method, label in ((-0.2, "ours", "retrieve (bm25s)"), (0.2, "baseline", "word overlap loop")):
        latency_axis.bar([i + offset for i in range(len(counts))],
                         [results["retrieval"]["latency"][c][method]["p99_ms"] for c in counts], 0.4, label=label)
    latency_axis.set_xticks(range(len(counts)), [f"{int(c):,} facts" for c in counts])
    latency_axis.set_yscale("log")
    latency_axis.set_ylabel("p99 ms per retrieval")
    latency_axis.legend()
    if use:
        axis = axes[0][1]
        values = [use[name]["fact_replies"]["perplexity"] for name in ("without", "with")]
        axis.bar(["without knowledge", "with knowledge"], values, color=["#999999", "#2a7ab9"])
        axis.set_ylabel("held-out perplexity, replies stating a fact")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrieval-only", action="store_true", help="skip training (part 2)")
    parser.add_argument("--base-steps", type=int, default=400, help="pre-training steps of the tiny base")
    parser.add_argument("--epochs", type=float, default=3.0, help="LoRA epochs of each of the two runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where knowledge.json and knowledge.png go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from persona_training.prepare import PrepareOptions, run_prepare

    with tempfile.TemporaryDirectory(prefix="bench-knowledge-") as tmp:
        work = Path(tmp)
        export, facts_file, data = work / "result.json", work / "facts.md", work / "data"
        export.write_text(render(generate(personal=True)), encoding="utf-8")
        facts_file.write_text(facts_markdown(), encoding="utf-8")
        run_prepare([export], data, PrepareOptions(persona_id=BORIS.from_id))
        from persona_training.data import load_dialogues

        records = load_dialogues([data]).train
        results: dict = {"retrieval": retrieval_part(records, facts_file)}
        if not args.retrieval_only:
            results["use"] = use_part(work, export, facts_file, data, args.base_steps, args.epochs)
    print_tables(results)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "knowledge.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    plot(results, args.results / "knowledge.png")
    print(f"\nwrote {args.results / 'knowledge.json'} and {args.results / 'knowledge.png'}")


if __name__ == "__main__":
    main()
