"""Generated token ids -> reply text, with no marker token left in it.

FRED-T5's tokenizer (GPT-2-style byte-level BPE) has `<extra_id_N>`, `<LM>` and `<SCn>` as plain
added tokens, not special ones: `skip_special_tokens=True` removes `</s>` and `<pad>` but leaves
`<extra_id_0>` (which FRED-based models tend to emit first) in the text a user would read. Every
special or added token of the tokenizer is a marker, never words, so all of them go, wherever
they appear. Free of torch and TorchServe: the handler calls it in its decode step, and the
fidelity evaluation (`persona eval`) decodes the replies it judges with it, so both read the same text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def marker_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens and of every token added to its vocabulary."""
    return frozenset(tokenizer.all_special_ids) | frozenset(tokenizer.get_added_vocab().values())


def decode_replies(tokenizer: Any, sequences: Iterable[Sequence[int]]) -> list[str]:
    """Decode generated sequences (one per request) without special or added marker tokens."""
    markers = marker_ids(tokenizer)
    kept = [[token for token in (ids.tolist() if hasattr(ids, "tolist") else ids) if token not in markers]
            for ids in sequences]
    return [" ".join(text.split()) for text in tokenizer.batch_decode(kept, skip_special_tokens=True)]
