"""Cleaning message text for training: no URLs ever, personal data only as placeholders.

URLs are stripped, never kept: a model that learned them would hand out (possibly private)
links. Entities tell exactly what a piece is (Telegram marks links, e-mails, phone numbers and
mentions when it exports), and regular expressions catch what the sender typed unmarked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from persona_training.telegram import TextEntity

EMAIL = "[email]"
PHONE = "[phone]"
MENTION = "[mention]"

URL_ENTITIES = frozenset({"link", "url"})  # the entity text is the URL itself
SCRUB_ENTITIES = {"email": EMAIL, "phone": PHONE, "mention": MENTION, "mention_name": MENTION}

_URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)\S+"  # scheme or www. prefix
    r"|\b(?:[a-z0-9-]+\.)+[a-z]{2,}/\S*",  # bare host with a path: t.me/x, github.com/a/b
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])(?:(?:\+\d{1,3}|8)[\s-]?)?\(?\d{3}\)?[\s-]?\d{3}[\s-]?\d{2}[\s-]?\d{2}(?!\w)")
_MENTION = re.compile(r"(?<![\w@])@[A-Za-z]\w{3,31}")
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
    text = _URL.sub(" ", "".join(pieces))
    if scrub:
        text = _MENTION.sub(MENTION, _PHONE.sub(PHONE, _EMAIL.sub(EMAIL, text)))
    return _SPACE.sub(" ", text).strip()
