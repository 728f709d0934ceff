"""Validation loss and perplexity: the numbers the report, the operator's gate and people compare.

The loss is the mean negative log-likelihood per target token over the whole validation set
(token-weighted, so long replies count for their length); perplexity is its exponential. Each
batch's mean comes from the model's own loss, which aligns logits and labels for its family
(a causal LM shifts them by one); a causal prompt's labels are ignored, so both families count
reply tokens only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from persona_training.data import IGNORE_INDEX, TokenizedExample, collate


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # beyond e^700 a float overflows; such a model is noise anyway


def evaluate(
    model, examples: Sequence[TokenizedExample], batch_size: int, device,
    autocast: Callable[[], AbstractContextManager], pad_id: int = 0,
) -> dict[str, float]:
    """`{"loss", "perplexity", "tokens"}` on `examples`; leaves the model in eval mode."""
    import torch

    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total_nll = 0.0
    total_tokens = 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collate([examples[i] for i in order[start:start + batch_size]], pad_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            with autocast():
                mean = model(**batch).loss
            tokens = int((batch["labels"] != IGNORE_INDEX).sum())
            total_nll += mean.float().item() * tokens
            total_tokens += tokens
    loss = total_nll / total_tokens
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": total_tokens}
