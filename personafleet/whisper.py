"""Whisper transcription of windows of at most 30 s, as the project calls it: the tiny Whisper's
evaluation (`persona init-asr`) and the `asr` model's handler.

One call site for `generate`, so its arguments are right once: the features' attention mask
(without it transformers warns that it cannot infer one, pad and end tokens being the same), and
the token bound as `max_length` (Whisper's `generate` counts it after the prompt; `max_new_tokens`
beside a checkpoint's own `max_length` makes transformers warn that both are set). Imports
torch and transformers only when called.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from personafleet.audio import SAMPLE_RATE

# transformers 5.23's Whisper `generate` hands `super().generate()` a generation config together
# with the suppress-token arguments it has just cleared from it (huggingface/transformers#48108),
# which makes its own base class warn that the two are mutually exclusive. Nothing a caller passes
# avoids it, so that one message (and only while Whisper generates) is dropped.
UPSTREAM_KWARGS_WARNING = "Passing `generation_config` together with generation-related arguments"


def transcribe_windows(
    model: Any, processor: Any, windows: Sequence[np.ndarray], *, language: str | None, max_tokens: int,
    device: Any = None, dtype: Any = None,
) -> list[str]:
    """Greedy transcripts of `windows` (16 kHz mono samples, each at most the model's window);
    `language` None: Whisper detects it; at most `max_tokens` tokens after the prompt."""
    import torch

    extracted = processor.feature_extractor(
        list(windows), sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
    )
    options: dict[str, Any] = {
        "attention_mask": extracted.attention_mask.to(device) if device is not None else extracted.attention_mask,
        "task": "transcribe",
        "max_length": max_tokens,
    }
    if language is not None:
        options["language"] = language
    features = extracted.input_features
    if device is not None:
        features = features.to(device, dtype)
    with torch.inference_mode(), _without(UPSTREAM_KWARGS_WARNING):
        ids = model.generate(features, **options)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


class _Dropping(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


@contextlib.contextmanager
def _without(message_start: str) -> Iterator[None]:
    """transformers' generation logger without the one message starting so, for this block only."""
    logger = logging.getLogger("transformers.generation.utils")
    dropping = _Dropping(message_start)
    logger.addFilter(dropping)
    try:
        yield
    finally:
        logger.removeFilter(dropping)
