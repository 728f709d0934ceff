"""The handler's decode step (contract 9): the core's `personafleet.decoding`, which training's
fidelity evaluation shares, so a judged reply is exactly the text a user would read."""

from personafleet.decoding import decode_replies, marker_ids

__all__ = ["decode_replies", "marker_ids"]
