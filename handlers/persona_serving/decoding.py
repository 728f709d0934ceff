"""The handler's decode step (contract 9): the core's `personafleet.decoding`, which training's
fidelity evaluation shares, so a judged reply is exactly the text a user would read; and what a
streaming client has not been shown yet of it (`unseen`)."""

from personafleet.decoding import decode_replies, marker_ids

__all__ = ["decode_replies", "marker_ids", "unseen"]


def unseen(shown: str, text: str) -> str:
    """What a streaming client has not been shown yet of `text`, the reply decoded so far.

    Held back: a trailing incomplete character (byte-level BPE decodes half a Cyrillic letter
    as U+FFFD until its second byte arrives) and anything when `text` no longer starts with what
    was shown (a tokenizer that re-merges across tokens): the final event's whole reply, which
    clients show in the end, puts such a preview right."""
    text = text.rstrip("\ufffd")
    return text[len(shown):] if text.startswith(shown) else ""
