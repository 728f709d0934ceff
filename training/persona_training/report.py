"""What a training run leaves for people and machines: report.json, the loss curve, the reply
length histogram, a model card.

`report.json` is read by the operator's rollout gate (`eval.after.loss`, `fidelity.score`,
`fidelity.leaks.count`) and by packaging; the PNGs and the README are for the person deciding
whether this version is any good.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from personafleet.family import AUTO_CLASSES
from personafleet.files import write_text_atomic

REPORT_FILE = "report.json"
LOSS_CURVE_FILE = "loss_curve.png"
REPLY_LENGTHS_FILE = "reply_lengths.png"
MODEL_CARD_FILE = "README.md"


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    """Written whole or not at all: the operator's gate reads it from the shared store."""
    return write_text_atomic(run_dir / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def _figure(path: Path, xlabel: str, ylabel: str, title: str) -> Iterator[Any]:
    """The axes of one 8x4.5 in PNG chart; labelled, gridded and saved to `path` on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        yield axes
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)


def plot_loss_curve(path: Path, losses: list[tuple[int, float]], evals: list[tuple[int, float]],
                    before: float) -> Path:
    """Training loss per step (and its moving average) against validation loss."""
    with _figure(path, "optimizer step", "loss (nats per target token)", "persona train: loss") as axes:
        steps = [step for step, _ in losses]
        values = [value for _, value in losses]
        axes.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        window = max(1, len(values) // 20)
        if len(values) >= window > 1:
            smooth = [sum(values[i - window + 1:i + 1]) / window for i in range(window - 1, len(values))]
            axes.plot(steps[window - 1:], smooth, color="tab:blue", label=f"train (mean of {window})")
        axes.plot([0] + [step for step, _ in evals], [before] + [value for _, value in evals],
                  "o-", color="tab:orange", label="validation")
    return path


def plot_reply_lengths(path: Path, lengths: dict[str, list[int]]) -> Path:
    """Histograms of reply length in characters: the real held-out replies against the generated ones."""
    with _figure(path, "reply length (characters)", "replies", "persona eval: reply lengths, real vs generated") as axes:
        longest = max((max(values) for values in lengths.values() if values), default=1)
        bins = list(range(0, longest + 11, max(1, (longest + 10) // 30)))
        for label, values in lengths.items():
            axes.hist(values, bins=bins, histtype="step", linewidth=1.6, label=f"{label} (n={len(values)})")
    return path


def fidelity_section(fidelity: dict[str, Any] | None) -> str:
    """The model card's fidelity table: floor (the base) / this version / ceiling (the real replies).
    Without an adapter (`persona eval --base-only`) the middle column is empty."""
    if not fidelity:
        return "Fidelity was not evaluated (`persona eval --run THIS_DIR`)."
    if "skipped" in fidelity:
        return f"Fidelity was not judged: {fidelity['skipped']}."
    authorship, shape, leaks = fidelity["authorship"], fidelity["shape"], fidelity["leaks"]
    base, mine = shape["base"]["serving"], shape.get("adapter", {}).get("serving", {})

    def cell(value: float | None, bold: bool = False) -> str:
        return "-" if value is None else f"**{value:.2f}**" if bold else f"{value:.2f}"

    rows = []
    if "skipped" in authorship:
        note = f"Authorship was not measured: {authorship['skipped']}."
    else:
        this = authorship.get("adapter", {}).get("serving")
        rows.append(f"| reads as the persona (authorship share) | {cell(authorship['base']['serving'])} | "
                    f"{cell(this, bold=True)} | {cell(authorship['real'])} |")
        held = authorship["classifier"]["held_out"]
        note = (f"The authorship classifier (character n-grams + logistic regression, the persona against "
                f"{authorship['classifier']['authors'] - 1} other authors) has a balanced accuracy of "
                f"{cell(held.get('balanced_accuracy'))} on {held['messages']} real held-out messages: "
                f"the figures mean no more than that.")
    for key, name in (("length_distance", "length distance to real (KS)"),
                      ("profile_distance", "character profile distance"),
                      ("distinct_2", "distinct-2"), ("repetition", "repeating replies")):
        rows.append(f"| {name} | {cell(base[key])} | {cell(mine.get(key))} | {cell(shape['real'][key])} |")
    base_leaks = sum(leaks["base"].values())
    rows.append(f"| replies leaking training PII | {base_leaks} | {'-' if leaks['count'] is None else leaks['count']} | - |")
    return "\n".join([
        f"On {fidelity['prompts']} held-out prompts, replies with the serving defaults "
        f"(greedy figures in report.json), {fidelity['seconds']:.0f} s:",
        "",
        "| | floor (base) | this version | ceiling (real replies) |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        note,
        "",
        f"![reply lengths]({REPLY_LENGTHS_FILE})",
    ])


def model_card(report: dict[str, Any]) -> str:
    """A short README for the run directory (Hugging Face model-card style front matter)."""
    persona = report["persona"]
    before, after = report["eval"]["before"], report["eval"]["after"]
    config = report["config"]
    family = report.get("family", "seq2seq")
    auto_class = AUTO_CLASSES[family]
    change = 100.0 * (after["perplexity"] - before["perplexity"]) / before["perplexity"]
    return f"""---
library_name: peft
base_model: {report["base_model"]}
tags: [personafleet, lora, {family}]
---

# {persona["name"]}: LoRA adapter

{persona["description"]}

Trained by `persona train` on {report["data"]["train"]["examples"]} dialogue records
({", ".join(report["data"]["sources"])}); evaluated on {report["data"]["val"]["examples"]} held-out records.

| | loss | perplexity |
| --- | --- | --- |
| before training | {before["loss"]:.3f} | {before["perplexity"]:.1f} |
| after training | {after["loss"]:.3f} | {after["perplexity"]:.1f} ({change:+.0f}%) |

![loss curve]({LOSS_CURVE_FILE})

## Does it sound like the person?

{fidelity_section(report.get("fidelity"))}

- {family} base; LoRA rank {config["lora_rank"]}, alpha {config["lora_alpha"]}, dropout {config["lora_dropout"]},
  modules {", ".join(config["target_modules"])}
- {report["steps"]} optimizer steps of {config["batch_size"]} x {config["gradient_accumulation"]} examples,
  learning rate {config["learning_rate"]} ({config["schedule"]}), precision {report["precision"]}, seed {config["seed"]}
- {report["train_seconds"]:.0f} s of training at {report["samples_per_second"]:.1f} samples/s on {report["device"]}

## Use

The prompt is `personafleet.prompt.render_prompt` with the template in `persona.json`;
`persona package --run THIS_DIR` builds a TorchServe archive. In Python:

```python
from peft import PeftModel
from transformers import {auto_class}, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")
model = PeftModel.from_pretrained({auto_class}.from_pretrained("{report["base_model"]}"), "THIS_DIR")
```
"""
