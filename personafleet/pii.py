"""Personal data a reply must not carry: phone numbers, e-mail addresses, card-like numbers, URLs.

ONE set of patterns for the whole project: `persona prepare` strips URLs and (with `--scrub`)
replaces e-mails and phones, the fidelity evaluation counts generated replies that repeat such a
value from the training data (a leak), and the serving reply filter's PII rules block them.

A found value is also normalised (digits only for phones and cards, lower case for e-mails and
URLs) so "+7 916 555-01-23" in a chat and "+79165550123" in a reply are the same phone number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

PiiKind = Literal["phone", "email", "card", "url"]
PII_KINDS: tuple[PiiKind, ...] = ("card", "phone", "email", "url")  # cards first: a card number also looks like a phone

URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)\S+"  # scheme or www. prefix
    r"|\b(?:[a-z0-9-]+\.)+[a-z]{2,}/\S*",  # bare host with a path: t.me/x, github.com/a/b
    re.IGNORECASE,
)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"(?<![\w+])(?:(?:\+\d{1,3}|8)[\s-]?)?\(?\d{3}\)?[\s-]?\d{3}[\s-]?\d{2}[\s-]?\d{2}(?!\w)")
CARD = re.compile(r"(?<![\w+])\d(?:[ -]?\d){12,18}(?!\w)")  # 13-19 digits, grouped by spaces or dashes
MENTION = re.compile(r"(?<![\w@])@[A-Za-z]\w{3,31}")

PATTERNS: dict[PiiKind, re.Pattern[str]] = {"card": CARD, "phone": PHONE, "email": EMAIL, "url": URL}
PLACEHOLDERS: dict[PiiKind, str] = {"phone": "[phone]", "email": "[email]", "card": "[card]", "url": "[url]"}


@dataclass(frozen=True)
class PiiValue:
    kind: PiiKind
    value: str  # normalised: the same phone, card, e-mail or URL written differently compares equal


def luhn_valid(digits: str) -> bool:
    """The check digit every payment card number carries: it tells a card from any long number."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _normalise(kind: PiiKind, found: str) -> str | None:
    if kind in ("phone", "card"):
        digits = re.sub(r"\D", "", found)
        if kind == "card" and not luhn_valid(digits):
            return None
        return digits[-10:] if kind == "phone" else digits  # +7 / 8 prefixes name the same number
    if kind == "url":
        return re.sub(r"^(?:https?|ftp)://|^www\.", "", found.lower()).rstrip("/.,)!?")
    return found.lower()


def find_pii(text: str, kinds: tuple[PiiKind, ...] = PII_KINDS) -> Iterator[PiiValue]:
    """Every phone, e-mail, card-like number (Luhn-valid) and URL in `text`, normalised; a span
    taken by one kind (a card) is not read again as another (a phone)."""
    taken: list[tuple[int, int]] = []
    for kind in PII_KINDS:
        if kind not in kinds:
            continue
        for match in PATTERNS[kind].finditer(text):
            if any(start < match.end() and match.start() < end for start, end in taken):
                continue
            value = _normalise(kind, match.group())
            if value is not None:
                taken.append(match.span())
                yield PiiValue(kind, value)


def scrub_pii(text: str) -> str:
    """`text` with every phone, e-mail, card-like number and URL replaced by its placeholder."""
    for kind in PII_KINDS:
        pattern = PATTERNS[kind]
        placeholder = PLACEHOLDERS[kind]
        if kind == "card":
            text = pattern.sub(lambda m: placeholder if luhn_valid(re.sub(r"\D", "", m.group())) else m.group(), text)
        else:
            text = pattern.sub(placeholder, text)
    return text
