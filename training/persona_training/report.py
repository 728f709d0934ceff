"""What a training run leaves for people and machines: report.json, the loss curve, a model card.

`report.json` is read by the operator's rollout gate (`eval.after.loss`) and by packaging; the
PNG and the README are for the person deciding whether this version is any good.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personafleet.family import AUTO_CLASSES
from personafleet.files import write_text_atomic

REPORT_FILE = "report.json"
LOSS_CURVE_FILE = "loss_curve.png"
MODEL_CARD_FILE = "README.md"


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    """Written whole or not at all: the operator's gate reads it from the shared store."""
    return write_text_atomic(run_dir / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def plot_loss_curve(path: Path, losses: list[tuple[int, float]], evals: list[tuple[int, float]],
                    before: float) -> Path:
    """Training loss per step (and its moving average) against validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps = [step for step, _ in losses]
    values = [value for _, value in losses]
    axes.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
    window = max(1, len(values) // 20)
    if len(values) >= window > 1:
        smooth = [sum(values[i - window + 1:i + 1]) / window for i in range(window - 1, len(values))]
        axes.plot(steps[window - 1:], smooth, color="tab:blue", label=f"train (mean of {window})")
    axes.plot([0] + [step for step, _ in evals], [before] + [value for _, value in evals],
              "o-", color="tab:orange", label="validation")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats per target token)")
    axes.set_title("persona train: loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


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
