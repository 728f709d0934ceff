#!/usr/bin/env python3
"""Training throughput of `persona train` against a naive Hugging Face `Seq2SeqTrainer` run.

Both train the same LoRA model (same base, rank, modules, learning rate, batch size, number of
steps) on the same dialogue records in this process, one after the other:

- `persona train`: dynamic padding (each batch padded to its own longest example) and
  length-grouped batches;
- baseline: `Seq2SeqTrainer` with every example padded to the maximum lengths
  (`max_source_tokens` / `max_target_tokens`) and randomly ordered batches.

    .venv/bin/python benchmarks/training.py                     # tiny base + sample export
    .venv/bin/python benchmarks/training.py --base DIR --data DIR --steps 100
    .venv/bin/python benchmarks/training.py --fred-large --batch-size 8   # on a GPU machine

Without --base a base of the `persona init-base` default size is built (few pre-training steps:
throughput does not depend on how well it was pre-trained); `--fred-large` instead builds a
model with FRED-T5-large's configuration (~770M parameters, random weights). Without --data the
sample export is prepared. Throughput is samples per second of the optimisation steps
(evaluation excluded); on CUDA the table adds each method's peak GPU memory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
from pathlib import Path

from personafleet.persona import PersonaSpec
from persona_training.base_model import DEFAULT_CORPUS, BaseModelOptions, init_base
from persona_training.config import TrainConfig
from persona_training.data import LengthGroupedBatches, load_dialogues, tokenize_records
from persona_training.modeling import load_base_model, load_tokenizer, pick_hardware, with_lora
from persona_training.prepare import PrepareOptions, run_prepare
from persona_training.train import train

ROOT = Path(__file__).resolve().parent.parent


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


def ours(base: Path, data: Path, config: TrainConfig, work: Path) -> dict:
    report = train([data], str(base), work / "ours", config)
    return {"samples": report["samples"], "seconds": report["train_seconds"]}


def naive(base: Path, data: Path, config: TrainConfig, work: Path) -> dict:
    """The notebook way: pad everything to the maximum length, let `Trainer` shuffle."""
    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, default_data_collator

    tokenizer = load_tokenizer(str(base))
    examples = tokenize_records(load_dialogues([data]).train, tokenizer, config.persona,
                                config.max_source_tokens, config.max_target_tokens)
    pad = lambda ids, width, value: ids + [value] * (width - len(ids))  # noqa: E731
    dataset = [
        {"input_ids": torch.tensor(pad(e.input_ids, config.max_source_tokens, 0)),
         "attention_mask": torch.tensor(pad([1] * len(e.input_ids), config.max_source_tokens, 0)),
         "labels": torch.tensor(pad(e.labels, config.max_target_tokens, -100))}
        for e in examples
    ]
    torch.manual_seed(config.seed)
    model = with_lora(load_base_model(str(base), config, pick_hardware(config)), config)
    arguments = Seq2SeqTrainingArguments(
        output_dir=str(work / "naive"), per_device_train_batch_size=config.batch_size, max_steps=config.max_steps,
        learning_rate=config.learning_rate, warmup_steps=config.warmup_steps, lr_scheduler_type=config.schedule,
        seed=config.seed, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=pick_hardware(config).device == "cpu",
    )
    trainer = Seq2SeqTrainer(model=model, args=arguments, train_dataset=dataset, data_collator=default_data_collator)
    metrics = trainer.train().metrics
    return {"samples": config.max_steps * config.batch_size, "seconds": metrics["train_runtime"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="base model directory (default: build a tiny one)")
    parser.add_argument("--data", type=Path, help="`persona prepare` output (default: the sample export)")
    parser.add_argument("--fred-large", action="store_true", help="FRED-T5-large-sized model, random weights")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    cuda = torch.cuda.is_available()

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        base = args.base
        if base is None:
            base = work / "base"
            init_base(base, [ROOT / DEFAULT_CORPUS], BaseModelOptions(steps=20))
            if args.fred_large:
                base = fred_t5_large(base, work / "fred-t5-large")
        data = args.data
        if data is None:
            data = work / "data"
            with contextlib.redirect_stdout(io.StringIO()):
                run_prepare([ROOT / DEFAULT_CORPUS], data, PrepareOptions())
        config = TrainConfig(persona=PersonaSpec(), max_steps=args.steps, batch_size=args.batch_size,
                             warmup_steps=0, eval_every=10**6, checkpoint_every=10**6)

        examples = tokenize_records(load_dialogues([data]).train, load_tokenizer(str(base)), config.persona,
                                    config.max_source_tokens, config.max_target_tokens)
        sources = [len(e.input_ids) for e in examples]
        grouped = LengthGroupedBatches(sources, config.batch_size, config.length_group_size, config.seed).epoch(0)
        grouped = grouped[:args.steps]
        ours_padding = padding_share([[sources[i] for i in batch] for batch in grouped],
                                     [max(sources[i] for i in batch) for batch in grouped])
        naive_padding = 1 - sum(sources) / (len(sources) * config.max_source_tokens)

        rows = []
        for name, run, padding in (("naive Seq2SeqTrainer (pad to max length, random batches)", naive, naive_padding),
                                   ("persona train (dynamic padding, length-grouped)", ours, ours_padding)):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            result = run(base, data, config, work)
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
            rows.append((name, result["samples"], result["seconds"], padding, peak))

    baseline = rows[0][1] / rows[0][2]
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{'FRED-T5-large-sized' if args.fred_large else 'tiny'} model on {device}; {len(examples)} training "
          f"examples, {args.steps} steps x batch {args.batch_size}, max_source_tokens {config.max_source_tokens}, "
          f"max_target_tokens {config.max_target_tokens}\n")
    print(f"| {'method':<58} | samples | train s | samples/s | input padding | peak GPU mem | speed-up |")
    print(f"| {'-' * 58} | ------: | ------: | --------: | ------------: | -----------: | -------: |")
    for name, samples, seconds, padding, peak in rows:
        rate = samples / seconds
        print(f"| {name:<58} | {samples:7d} | {seconds:7.1f} | {rate:9.1f} | {padding:12.0%} | {peak:>12} | "
              f"{rate / baseline:7.2f}x |")


if __name__ == "__main__":
    main()
