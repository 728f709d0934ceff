#!/usr/bin/env python3
"""Training throughput of `persona train` against a naive Hugging Face `Trainer` run, per model family.

For each family (seq2seq: the tiny T5; causal: the tiny Llama of `init-base --arch causal`), both
methods train the same LoRA model (same base, rank, modules, learning rate, batch size, number of
steps) on the same dialogue records in this process, one after the other:

- `persona train`: dynamic padding (each batch padded to its own longest example) and
  length-grouped batches;
- baseline, the notebook way: `Seq2SeqTrainer` (seq2seq) or `Trainer` (causal, as run_clm) with
  every example padded to the maximum lengths and randomly ordered batches.

    .venv/bin/python benchmarks/training.py                     # both tiny bases + sample export
    .venv/bin/python benchmarks/training.py --arch causal --base DIR --data DIR --steps 100
    .venv/bin/python benchmarks/training.py --fred-large --batch-size 8   # on a GPU machine

Without --base a base of the `persona init-base` default size is built per family (few
pre-training steps: throughput does not depend on how well it was pre-trained); `--fred-large`
instead builds a model with FRED-T5-large's configuration (~770M parameters, random weights).
Without --data the sample export is prepared. Throughput is samples and real (non-padding) tokens
per second of the optimisation steps (evaluation excluded); the table also shows the validation
perplexity before -> after of the `persona train` run (its report.json), and on CUDA each method's
peak GPU memory. Writes `benchmarks/results/training.{json,png}` (or --results).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path

from personafleet.family import ModelFamily, load_family
from personafleet.persona import PersonaSpec
from persona_training.base_model import DEFAULT_CORPUS, BaseModelOptions, init_base
from persona_training.config import TrainConfig
from persona_training.data import LengthGroupedBatches, TokenizedExample, load_dialogues, tokenize_records
from persona_training.modeling import lora_targets, load_base_model, load_tokenizer, pick_hardware, with_lora
from persona_training.prepare import PrepareOptions, run_prepare
from persona_training.train import train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def fred_t5_large(tiny_base: Path, out: Path) -> Path:
    """FRED-T5-large's architecture with random weights and the tiny base's tokenizer."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=50364, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                      num_heads=16, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(out)
    return out


def padding_share(lengths: list[list[int]], widths: list[int]) -> float:
    """Share of the token positions in the given batches that are padding."""
    real = sum(sum(batch) for batch in lengths)
    total = sum(len(batch) * width for batch, width in zip(lengths, widths))
    return 1 - real / total


def encoded(base: Path, data: Path, config: TrainConfig) -> tuple[ModelFamily, object, TrainConfig, list[TokenizedExample]]:
    """The family, tokenizer, config (family defaults resolved, as `persona train` does) and examples."""
    family = load_family(str(base))
    tokenizer = load_tokenizer(str(base), family)
    persona = config.persona.model_copy(update={"template": family.default_template(tokenizer)})
    config = config.model_copy(update={"persona": persona, "target_modules": lora_targets(family, config.target_modules)})
    examples = tokenize_records(load_dialogues([data]).train, tokenizer, family, persona,
                                config.max_source_tokens, config.max_target_tokens)
    return family, tokenizer, config, examples


def real_tokens(example: TokenizedExample, family: ModelFamily) -> int:
    """Tokens the model reads in one example: a causal sequence holds the reply, a seq2seq one does not."""
    return len(example.input_ids) + (0 if family.causal else len(example.labels))


def ours(base: Path, data: Path, config: TrainConfig, work: Path) -> dict:
    report = train([data], str(base), work / "ours", config)
    return {"samples": report["samples"], "seconds": report["train_seconds"],
            "perplexity": {"before": report["eval"]["before"]["perplexity"], "after": report["eval"]["after"]["perplexity"]}}


def naive(base: Path, data: Path, config: TrainConfig, work: Path) -> dict:
    """The notebook way: pad everything to the maximum length, let `Trainer` shuffle."""
    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, default_data_collator

    family, tokenizer, config, examples = encoded(base, data, config)
    pad = lambda ids, width, value: ids + [value] * (width - len(ids))  # noqa: E731
    width = config.max_source_tokens + (config.max_target_tokens if family.causal else 0)
    depth = width if family.causal else config.max_target_tokens
    dataset = [
        {"input_ids": torch.tensor(pad(e.input_ids, width, tokenizer.pad_token_id)),
         "attention_mask": torch.tensor(pad([1] * len(e.input_ids), width, 0)),
         "labels": torch.tensor(pad(e.labels, depth, -100))}
        for e in examples
    ]
    torch.manual_seed(config.seed)
    hardware = pick_hardware(config)
    model = with_lora(load_base_model(str(base), family, config, hardware), family, config, str(base))
    arguments = Seq2SeqTrainingArguments(
        output_dir=str(work / "naive"), per_device_train_batch_size=config.batch_size, max_steps=config.max_steps,
        learning_rate=config.learning_rate, warmup_steps=config.warmup_steps, lr_scheduler_type=config.schedule,
        seed=config.seed, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=hardware.device == "cpu",
    )
    trainer_class = Trainer if family.causal else Seq2SeqTrainer
    trainer = trainer_class(model=model, args=arguments, train_dataset=dataset, data_collator=default_data_collator)
    metrics = trainer.train().metrics
    return {"samples": config.max_steps * config.batch_size, "seconds": metrics["train_runtime"]}


def measure(arch: str, base: Path, data: Path, config: TrainConfig, work: Path, steps: int) -> dict:
    """Both methods on one base: samples/s, real tokens/s, input padding, perplexity before -> after."""
    import torch

    cuda = torch.cuda.is_available()
    family, _, resolved, examples = encoded(base, data, config)
    lengths = [len(e.input_ids) for e in examples]
    tokens_per_sample = sum(real_tokens(e, family) for e in examples) / len(examples)
    grouped = LengthGroupedBatches(lengths, config.batch_size, config.length_group_size, config.seed).epoch(0)[:steps]
    ours_padding = padding_share([[lengths[i] for i in batch] for batch in grouped],
                                 [max(lengths[i] for i in batch) for batch in grouped])
    width = config.max_source_tokens + (config.max_target_tokens if family.causal else 0)
    naive_padding = 1 - sum(lengths) / (len(lengths) * width)
    rows = []
    for method, run, padding in ((f"naive {'Trainer' if family.causal else 'Seq2SeqTrainer'} (pad to max, random)", naive, naive_padding),
                                 ("persona train (dynamic padding, length-grouped)", ours, ours_padding)):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = run(base, data, config, work / arch)
        rate = result["samples"] / result["seconds"]
        rows.append({"method": method, "samples": result["samples"], "seconds": round(result["seconds"], 2),
                     "samples_per_s": round(rate, 2), "tokens_per_s": round(rate * tokens_per_sample, 1),
                     "input_padding": round(padding, 3), "perplexity": result.get("perplexity"),
                     "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None})
    rows[1]["speedup"] = round(rows[1]["samples_per_s"] / rows[0]["samples_per_s"], 2)
    return {"family": family.name, "model_type": family.model_type, "examples": len(examples),
            "target_modules": resolved.target_modules, "tokens_per_sample": round(tokens_per_sample, 1), "rows": rows}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    labels, values, colours = [], [], []
    for arch, result in report["families"].items():
        for row, colour in zip(result["rows"], ("tab:gray", "tab:blue")):
            labels.append(f"{arch}\n{row['method'].split(' (')[0]}")
            values.append(row["tokens_per_s"])
            colours.append(colour)
    axes.bar(labels, values, color=colours)
    axes.set_ylabel("real tokens / s (training steps)")
    axes.set_title(f"persona train vs a naive loop, per family ({report['device']})")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["seq2seq", "causal", "both"], default="both", help="model families to measure")
    parser.add_argument("--base", type=Path, help="base model directory, with one --arch (default: build tiny ones)")
    parser.add_argument("--data", type=Path, help="`persona prepare` output (default: the sample export)")
    parser.add_argument("--fred-large", action="store_true", help="FRED-T5-large-sized model, random weights (seq2seq)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where training.json and training.png go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    arches = ["seq2seq", "causal"] if args.arch == "both" else [args.arch]
    if args.base is not None and len(arches) > 1:
        parser.error("--base needs one --arch")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    report: dict = {"device": device, "steps": args.steps, "batch_size": args.batch_size, "families": {}}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            data = work / "data"
            with contextlib.redirect_stdout(io.StringIO()):
                run_prepare([ROOT / DEFAULT_CORPUS], data, PrepareOptions())
        config = TrainConfig(persona=PersonaSpec(), max_steps=args.steps, batch_size=args.batch_size,
                             warmup_steps=0, eval_every=10**6, checkpoint_every=10**6)
        for arch in arches:
            base = args.base
            if base is None:
                base = work / f"base-{arch}"
                init_base(base, [ROOT / DEFAULT_CORPUS], BaseModelOptions(shape="llama" if arch == "causal" else "t5", steps=20))
                if args.fred_large and arch == "seq2seq":
                    base = fred_t5_large(base, work / "fred-t5-large")
            report["families"][arch] = measure(arch, base, data, config, work, args.steps)

    size = "FRED-T5-large-sized (random weights)" if args.fred_large else "tiny"
    print(f"\n{size} models on {device}; {args.steps} steps x batch {args.batch_size}, max_source_tokens "
          f"{config.max_source_tokens}, max_target_tokens {config.max_target_tokens}\n")
    print(f"| family  | {'method':<52} | samples/s | tokens/s | input padding | ppl before -> after | peak GPU | speed-up |")
    print(f"| ------- | {'-' * 52} | --------: | -------: | ------------: | ------------------: | -------: | -------: |")
    for arch, result in report["families"].items():
        for row in result["rows"]:
            ppl = row["perplexity"]
            ppl_text = f"{ppl['before']:.1f} -> {ppl['after']:.1f}" if ppl else "-"
            peak = f"{row['peak_gpu_gib']} GiB" if row["peak_gpu_gib"] is not None else "-"
            speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "1.00x"
            print(f"| {arch:<7} | {row['method']:<52} | {row['samples_per_s']:9.1f} | {row['tokens_per_s']:8.0f} | "
                  f"{row['input_padding']:12.0%} | {ppl_text:>19} | {peak:>8} | {speedup:>8} |")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "training.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot(report, args.results / "training.png")
    print(f"\nwrote {args.results / 'training.json'} and {args.results / 'training.png'}")


if __name__ == "__main__":
    main()
