"""Cleaning message text for training: no URLs ever, personal data only as placeholders.

URLs are stripped, never kept: a model that learned them would hand out (possibly private)
links. Entities tell exactly what a piece is (Telegram marks links, e-mails, phone numbers and
mentions when it exports), and regular expressions (`personafleet.pii`, the patterns the reply
filter and the leak count use too) catch what the sender typed unmarked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from personafleet import pii
from persona_training.telegram import TextEntity

EMAIL = pii.PLACEHOLDERS["email"]
PHONE = pii.PLACEHOLDERS["phone"]
MENTION = "[mention]"

URL_ENTITIES = frozenset({"link", "url"})  # the entity text is the URL itself
SCRUB_ENTITIES = {"email": EMAIL, "phone": PHONE, "mention": MENTION, "mention_name": MENTION}

_SPACE = re.compile(r"\s+")


def clean_text(segments: Iterable[TextEntity], *, scrub: bool = False) -> str:
    """One line of training text: URLs removed, whitespace collapsed, and with `scrub`,
    e-mails, phone numbers and @mentions replaced by placeholders. Empty if nothing is left."""
    pieces: list[str] = []
    for segment in segments:
        if segment.type in URL_ENTITIES:
            pieces.append(" ")
        elif scrub and segment.type in SCRUB_ENTITIES:
            pieces.append(SCRUB_ENTITIES[segment.type])
        else:
            pieces.append(segment.text)
    text = pii.URL.sub(" ", "".join(pieces))
    if scrub:
        text = pii.MENTION.sub(MENTION, pii.PHONE.sub(PHONE, pii.EMAIL.sub(EMAIL, text)))
    return _SPACE.sub(" ", text).strip()
