"""The reply filter: the last look at a reply before it leaves the handler.

A pure function over text - `ReplyFilter.check(text)` names the rule a text breaks, or None - so
the batch path calls it on each finished reply and a streaming path on the text so far (stopping
the stream at the first match, and replacing the reply in its final event, contract 2).

Rules (`personafleet.reply_rules`): the fleet's (`persona serve --reply-filter`) and the persona's
(`persona.json`), together: blocked words and phrases (whole words, case-insensitive, one compiled
alternation), regular expressions (the `regex` module, each search limited to
`PATTERN_TIMEOUT_SECONDS`: a pathological pattern blocks that reply under the rule "timeout"
instead of stalling the worker), and the PII kinds of `personafleet.pii`.

A blocked reply is REPLACED by the fallback, not regenerated: a second `generate` doubles that
request's latency and holds up its whole batch group; a memorised phone number or a phrase the
adapter favours tends to come back in a resample (and a greedy request gets the same text again);
and a streamed reply has already shown its start. The fallback is one known, safe answer that
clients show like any reply. The filtered text is never logged; the rule is counted.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import regex
import yaml
from pydantic import ValidationError

from personafleet.errors import PersonaError, first_error
from personafleet.pii import find_pii
from personafleet.reply_rules import BLOCKLIST_RULE, PATTERN_FLAGS, ReplyFilterRules

logger = logging.getLogger(__name__)

DEFAULT_FALLBACK = "Давай сменим тему."
PATTERN_TIMEOUT_SECONDS = 0.05
TIMEOUT_RULE = "timeout"
HELD_OUT_WARN_SHARE = 0.5  # a filter that blocks more of the person's own real replies is probably wrong


@dataclass(frozen=True)
class Filtered:
    """What leaves the handler: the reply (the fallback when a rule matched) and that rule."""

    reply: str
    rule: str | None


class ReplyFilter:
    """The fleet's rules and a persona's, compiled once (at adapter load)."""

    def __init__(self, *rules: ReplyFilterRules | None):
        given = [r for r in rules if r is not None]
        # Longest first, words of a phrase separated by any whitespace.
        phrases = sorted({r"\s+".join(map(re.escape, word.split())) for r in given for word in r.blocklist},
                         key=len, reverse=True)
        self._blocklist = (re.compile(r"(?<!\w)(?:" + "|".join(phrases) + r")(?!\w)", re.IGNORECASE)
                           if phrases else None)
        self._patterns = [(p.name, regex.compile(p.regex, PATTERN_FLAGS)) for r in given for p in r.patterns]
        self._pii = tuple(dict.fromkeys(kind for r in given for kind in r.pii))
        # The most specific fallback wins: the persona's (given last) over the fleet's.
        self.fallback = next((r.fallback for r in reversed(given) if r.fallback), DEFAULT_FALLBACK)

    def __bool__(self) -> bool:
        return bool(self._blocklist or self._patterns or self._pii)

    def check(self, text: str) -> str | None:
        """The name of the first rule `text` breaks (blocklist, patterns in order, then PII), or None."""
        if self._blocklist is not None and self._blocklist.search(text):
            return BLOCKLIST_RULE
        for name, pattern in self._patterns:
            try:
                if pattern.search(text, timeout=PATTERN_TIMEOUT_SECONDS):
                    return name
            except TimeoutError:
                logger.warning("Reply filter rule %r took over %.0f ms on a reply: blocked as %r",
                               name, PATTERN_TIMEOUT_SECONDS * 1000, TIMEOUT_RULE)
                return TIMEOUT_RULE
        if self._pii:
            found = next(find_pii(text, self._pii), None)
            if found is not None:
                return found.kind
        return None

    def apply(self, text: str) -> Filtered:
        rule = self.check(text)
        return Filtered(self.fallback if rule else text, rule)


def held_out_warning(reply_filter: ReplyFilter, replies: Sequence[str], label: str) -> str | None:
    """A warning when the filter blocks more than HELD_OUT_WARN_SHARE of the person's own real
    held-out replies (`run/fidelity_samples.jsonl`): such a filter blocks most of what the persona
    would say. None when it does not, or when there is nothing to check."""
    if not reply_filter or not replies:
        return None
    rules = Counter(rule for rule in map(reply_filter.check, replies) if rule)
    blocked = sum(rules.values())
    if blocked <= HELD_OUT_WARN_SHARE * len(replies):
        return None
    worst, count = rules.most_common(1)[0]
    return (f"the reply filter of {label} blocks {blocked} of its {len(replies)} real held-out replies "
            f"(rule {worst!r}: {count}): it will answer with the fallback most of the time")


def load_rules(path: Path) -> ReplyFilterRules:
    """The fleet's rules from a YAML (or JSON) file (`persona serve --reply-filter`); a bad rule is
    one line naming it, before anything starts."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PersonaError(f"{path}: no such reply filter file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PersonaError(f"{path}: cannot read the reply filter ({exc.__class__.__name__})") from None
    try:
        return ReplyFilterRules.model_validate(document)
    except ValidationError as exc:
        raise PersonaError(f"{path}: {first_error(exc, 'reply filter')}") from None
