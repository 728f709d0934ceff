"""Base models, training and publishing: `persona init-base|train|init-asr|package` (persona_training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_cli.common import log_steps
from personafleet.errors import PersonaError

app = typer.Typer()


@app.command("init-base")
def init_base(
    out: Annotated[Path, typer.Option("--out", help="Directory for the base model and its tokenizer.")],
    corpus: Annotated[Optional[list[Path]], typer.Option("--corpus", help="Telegram export(s) to learn from (repeatable). [default: examples/sample-export/result.json]")] = None,
    arch: Annotated[str, typer.Option(help="seq2seq (T5-style encoder-decoder) or causal (decoder-only).")] = "seq2seq",
    shape: Annotated[Optional[str], typer.Option(help="seq2seq: t5 (T5 tokenizer and architecture) or fred (FRED-T5's: byte-level BPE, plain added markers, gated-GELU, untied); causal: llama (the t5 tokenizer, LlamaForCausalLM) or gpt2 (ruGPT-3's: byte-level BPE without a pad token, GPT2LMHeadModel). [default: t5 / llama]")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Pre-training steps.")] = 400,
    d_model: Annotated[int, typer.Option(min=8, help="Hidden size.")] = 128,
    layers: Annotated[int, typer.Option(min=1, help="Layers (seq2seq: encoder and decoder layers, each).")] = 2,
    vocab_size: Annotated[int, typer.Option(min=64, help="Most tokenizer pieces.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and pre-training.")] = 13,
) -> None:
    """Build a tiny base (tokenizer + briefly pre-trained model) from a chat export."""
    from persona_training.base_model import DEFAULT_CORPUS, SHAPES, BaseModelOptions, init_base as build

    log_steps()
    if arch not in SHAPES:
        raise PersonaError(f"--arch {arch}: choose {' or '.join(SHAPES)}")
    shape = shape or SHAPES[arch][0]
    if shape not in SHAPES[arch]:
        raise PersonaError(f"--shape {shape}: a {arch} base is {' or '.join(SHAPES[arch])}")
    options = BaseModelOptions(shape=shape, steps=steps, d_model=d_model, num_layers=layers, vocab_size=vocab_size, seed=seed)
    build(out, corpus or [DEFAULT_CORPUS], options)


@app.command()
def train(
    data: Annotated[list[Path], typer.Option("--data", help="`persona prepare` output dir (repeatable: datasets are concatenated).")],
    base: Annotated[str, typer.Option("--base", help="Base model: a directory or a hub id (e.g. ai-forever/FRED-T5-large).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: adapter, tokenizer, report.json, loss curve, model card.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Training config (YAML); defaults otherwise.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out, if any.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Also write OUT/merged: the base with the adapter folded in.")] = False,
    knowledge: Annotated[Optional[list[Path]], typer.Option("--knowledge", help="Facts about the persona (Markdown list or one per line; repeatable), retrieved into each prompt.")] = None,
) -> None:
    """Fine-tune a LoRA adapter on dialogue records. Exits 143 after checkpointing on SIGTERM."""
    from persona_training.config import load_config
    from persona_training.train import PREEMPTED_EXIT_CODE, Preempted, train as run_training

    log_steps()
    try:
        settings = load_config(config).with_knowledge_files(knowledge or [])
        run_training(data, base, out, settings, resume=resume, merge=merge)
    except Preempted:
        raise typer.Exit(PREEMPTED_EXIT_CODE) from None


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Option("--run", help="Training run directory (adapter, persona.json, report.json).")],
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="`persona prepare` output dir (repeatable). [default: the run's training data]")] = None,
    base_only: Annotated[bool, typer.Option("--base-only", help="Judge the base alone (the floor); the run is left unchanged.")] = False,
    prompts: Annotated[int, typer.Option(min=30, help="Most held-out prompts to judge (a figure needs 30).")] = 200,
) -> None:
    """Does it sound like the person? Fidelity of the run's replies on held-out prompts (report.json, model card)."""
    from persona_training.eval_run import evaluate_run
    from persona_training.report import fidelity_section

    log_steps()
    block = evaluate_run(run, data or [], prompts=prompts, base_only=base_only)
    print(fidelity_section(block))
    if "skipped" in block:
        raise PersonaError(f"fidelity not judged: {block['skipped']}")
    if not base_only:
        print(f"written to {run / 'report.json'} (fidelity) and {run / 'README.md'}")


@app.command("init-asr")
def init_asr(
    out: Annotated[Path, typer.Option("--out", help="Directory for the speech model, its processor and report.json.")],
    corpus: Annotated[Optional[list[Path]], typer.Option("--corpus", help="Telegram export(s) whose sentences it learns (repeatable). [default: examples/sample-export/result.json]")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 300,
    sentences: Annotated[int, typer.Option(min=2, help="Most sentences synthesised.")] = 20,
    held_out: Annotated[int, typer.Option(min=1, help="Sentences kept out of training (CER on unseen speech).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of sentence choice, initialisation and training.")] = 13,
) -> None:
    """Build a tiny Whisper that recognises sentences of a chat read by espeak-ng (needs espeak-ng)."""
    from persona_training.asr_model import AsrOptions, init_asr as build
    from persona_training.base_model import DEFAULT_CORPUS

    log_steps()
    options = AsrOptions(steps=steps, sentences=sentences, held_out=held_out, seed=seed)
    report = build(out, corpus or [DEFAULT_CORPUS], options)
    print(f"character error rate: {report['cer']['trained']:.3f} on trained sentences, "
          f"{report['cer']['held_out']:.3f} on held-out ones (report: {out / 'report.json'})")


@app.command()
def package(
    run: Annotated[Path, typer.Option("--run", help="Training run directory (adapter, persona.json, report.json).")],
    name: Annotated[str, typer.Option("--name", help="Persona name (what requests name).")],
    version: Annotated[str, typer.Option("--version", help="Version: a positive integer such as 3.")],
    out: Annotated[Path, typer.Option("--out", help="The version's folder in the model store: STORE/NAME/vN.")],
    base_path: Annotated[Optional[str], typer.Option(help="Base model hub id or path to record (default: the one the adapter was trained on).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a folder that holds another version.")] = False,
) -> None:
    """Publish a training run as a version of a persona in the model store."""
    from persona_training.package import publish_version

    print(publish_version(run, name, version, out, base_path=base_path, force=force))
