"""`persona train`: LoRA fine-tuning of a seq2seq or causal base on dialogue records.

The loop is written out here in one place, nanoGPT-style: data, model, optimizer, then the
steps - forward, backward, optimizer step, evaluation, checkpoint - and finally the outputs.
A preempted Job (SIGTERM) checkpoints and exits with status 143; `--resume` continues from
the latest checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personafleet import knowledge as knowledge_store
from personafleet.family import base_reference, load_family
from personafleet.persona import PERSONA_FILE
from persona_training import checkpoint, report as reports
from persona_training.config import TrainConfig
from persona_training.data import LengthGroupedBatches, collate, data_fingerprint, load_dialogues, \
    token_stats, tokenize_records
from persona_training.authorship import read_authored_texts
from persona_training.evaluate import evaluate
from persona_training.fidelity import evaluate_fidelity
from persona_training.modeling import load_base_model, load_tokenizer, lora_targets, merge_adapter, \
    pick_hardware, with_lora

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what Kubernetes reports for a terminated container
MERGED_DIR = "merged"


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; `persona train --resume` continues."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint saved to {path}")
        self.step = step
        self.path = path


class SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (never mid-step)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        log.warning("SIGTERM received: finishing the current step, then saving a checkpoint")
        self.raised = True


def warmup_for(requested: int, total_steps: int) -> int:
    """The warm-up a run of `total_steps` gets: the requested steps, at most half the run. Short
    runs on small chats are the common case; they keep a warm-up instead of being refused."""
    warmup = min(requested, total_steps // 2)
    if warmup < requested:
        log.info("warmup_steps %d cut to %d: the run has only %d steps", requested, warmup, total_steps)
    return warmup


def train(
    data_dirs: Sequence[Path],
    base: str,
    out: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    merge: bool = False,
) -> dict[str, Any]:
    """Train a LoRA adapter into `out` and return the report (also written to out/report.json)."""
    started = time.monotonic()
    base = base_reference(base)

    # --- data ---------------------------------------------------------------------------------
    dialogues = load_dialogues(data_dirs)  # before the heavy imports: bad data fails at once
    knowledge = config.knowledge.build() if config.knowledge else None

    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    family = load_family(base)  # seq2seq or causal: how examples, prompts and replies are laid out
    tokenizer = load_tokenizer(base, family)
    persona = config.persona
    if "template" not in persona.model_fields_set:  # a template the config names is kept as is
        persona = persona.model_copy(update={"template": family.default_template(tokenizer)})
    config = config.model_copy(update={"persona": persona, "target_modules": lora_targets(family, config.target_modules)})
    encode = lambda records: tokenize_records(  # noqa: E731
        records, tokenizer, family, persona, config.max_source_tokens, config.max_target_tokens, knowledge)
    train_set, val_set = encode(dialogues.train), encode(dialogues.val)
    batches = LengthGroupedBatches([len(e.input_ids) for e in train_set], config.batch_size,
                                   config.length_group_size, config.seed)
    steps_per_epoch = math.ceil(len(batches) / config.gradient_accumulation)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    identity = {"config": config.model_dump(mode="json"), "base": base,
                "data": data_fingerprint(train_set + val_set)}

    # --- model, optimizer, schedule -----------------------------------------------------------
    hardware = pick_hardware(config)
    autocast = hardware.autocast()
    torch.manual_seed(config.seed)
    model = with_lora(load_base_model(base, family, config, hardware), family, config, base)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.schedule, optimizer, num_warmup_steps=warmup_for(config.warmup_steps, total_steps),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(hardware.device, enabled=hardware.precision == "fp16")
    eval_batch = config.batch_size * 2
    pad_id = tokenizer.pad_token_id
    validate = lambda: evaluate(model, val_set, eval_batch, hardware.device, autocast, pad_id)  # noqa: E731

    out.mkdir(parents=True, exist_ok=True)
    latest = checkpoint.latest_checkpoint(out) if resume else None
    if latest is not None:
        progress = checkpoint.load_checkpoint(latest, model, optimizer, scheduler, scaler, identity)
        log.info("resuming from %s (step %d of %d)", latest, progress.step, total_steps)
    else:
        if resume:
            log.info("no checkpoint in %s: starting from the beginning", checkpoint.checkpoint_dir(out))
        checkpoint.clear_checkpoints(out)
        progress = checkpoint.Progress()
        progress.before = validate()
        log.info("validation before training: loss %.3f, perplexity %.1f",
                 progress.before["loss"], progress.before["perplexity"])
    log.info("training %d of %d parameters (LoRA r=%d on %s) on %s/%s: %d steps, %d examples per step",
             sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters()), config.lora_rank,
             ",".join(config.target_modules), hardware.device, hardware.precision, total_steps,
             config.samples_per_step)

    # --- the loop -----------------------------------------------------------------------------
    bar = tqdm(total=total_steps, initial=progress.step, desc="training", unit="step", mininterval=1.0)
    with SigtermFlag() as sigterm:
        while progress.step < total_steps:
            epoch_batches = batches.epoch(progress.epoch)
            while progress.step < total_steps and progress.batch < len(epoch_batches):
                model.train()
                tick = time.perf_counter()
                micro = epoch_batches[progress.batch:progress.batch + config.gradient_accumulation]
                examples = sum(len(indices) for indices in micro)
                step_loss = 0.0
                for indices in micro:
                    batch = {k: v.to(hardware.device) for k, v in collate([train_set[i] for i in indices], pad_id).items()}
                    with autocast():
                        loss = model(**batch).loss * len(indices) / examples  # mean over the step's examples
                    scaler.scale(loss).backward()
                    step_loss += loss.item()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                progress.step += 1
                progress.batch += len(micro)
                progress.samples += examples
                progress.train_seconds += time.perf_counter() - tick
                progress.losses.append((progress.step, step_loss))
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}",
                                samples_s=f"{progress.samples / max(progress.train_seconds, 1e-9):.1f}")

                if progress.step % config.eval_every == 0 and progress.step < total_steps:
                    progress.evals.append((progress.step, validate()["loss"]))
                    bar.write(f"step {progress.step}: validation loss {progress.evals[-1][1]:.3f}")
                if sigterm.raised or progress.step % config.checkpoint_every == 0:
                    path = checkpoint.save_checkpoint(out, model, optimizer, scheduler, scaler, progress, identity)
                    if sigterm.raised:
                        bar.close()
                        log.warning("checkpoint saved at step %d to %s; exiting (resume with --resume)",
                                    progress.step, path)
                        raise Preempted(progress.step, path)
            if progress.batch >= len(epoch_batches):
                progress.epoch, progress.batch = progress.epoch + 1, 0
    bar.close()
    if progress.step % config.checkpoint_every:  # a kill while saving the results resumes from here
        checkpoint.save_checkpoint(out, model, optimizer, scheduler, scaler, progress, identity)

    # --- results ------------------------------------------------------------------------------
    after = validate()
    progress.evals.append((progress.step, after["loss"]))
    log.info("validation after training: loss %.3f, perplexity %.1f (before: %.1f)",
             after["loss"], after["perplexity"], progress.before["perplexity"])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / PERSONA_FILE).write_text(persona.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if knowledge is not None:
        knowledge_store.save(knowledge, out)  # `persona package` publishes it with the adapter
    fidelity = None
    if config.fidelity_prompts:
        fidelity = evaluate_fidelity(model, tokenizer, family, dialogues, read_authored_texts(data_dirs), persona,
                                     knowledge=knowledge, max_source_tokens=config.max_source_tokens,
                                     device=hardware.device, autocast=autocast, prompts=config.fidelity_prompts,
                                     seed=config.seed, run_dir=out)
    report = {
        "persona": persona.model_dump(mode="json"),
        "base_model": base,
        "family": family.name,
        "config": config.model_dump(mode="json"),
        "data": {
            "sources": dialogues.sources,
            "train": token_stats(train_set, family, config.max_source_tokens, config.max_target_tokens),
            "val": token_stats(val_set, family, config.max_source_tokens, config.max_target_tokens),
        },
        "knowledge": {"facts": len(knowledge.facts) if knowledge else 0},
        "device": hardware.device,
        "precision": hardware.precision,
        "steps": progress.step,
        "epochs": round(progress.samples / len(train_set), 3),
        "samples": progress.samples,
        "train_seconds": round(progress.train_seconds, 2),
        "samples_per_second": round(progress.samples / max(progress.train_seconds, 1e-9), 2),
        "wall_seconds": round(time.monotonic() - started, 2),
        "eval": {
            "before": progress.before,
            "after": after,
            "history": [{"step": step, "loss": loss} for step, loss in progress.evals],
        },
        "train_loss": [{"step": step, "loss": loss} for step, loss in progress.losses],
    }
    if fidelity is not None:
        report["fidelity"] = fidelity
    reports.plot_loss_curve(out / reports.LOSS_CURVE_FILE, progress.losses, progress.evals,
                            progress.before["loss"])
    if merge:
        merge_adapter(base, family, out, out / MERGED_DIR)
        report["merged"] = MERGED_DIR
    reports.write_report(out, report)
    (out / reports.MODEL_CARD_FILE).write_text(reports.model_card(report), encoding="utf-8")  # after peft's card
    checkpoint.clear_checkpoints(out)
    log.info("run saved to %s in %.0f s", out, report["wall_seconds"])
    return report
