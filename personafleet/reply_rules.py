"""What a reply may not say: the reply filter's rules, per persona (`persona.json`'s `reply_filter`,
from the PersonaModel's `spec.serving.replyFilter`) and for the whole fleet (`persona serve
--reply-filter FILE`, the chart's `serving.replyFilter`).

Validated here, where every writer of the rules meets them (train.yaml, persona.json, the
operator's spec, the serve flag), so a bad rule is refused where it is written, with its name:
an invalid regular expression never reaches a serving worker. The matching itself is serving's
(`persona_serving.reply_filter`).
"""

from __future__ import annotations

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personafleet.pii import PiiKind

RULE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
# Rule names the filter gives its own rules (the `rule` label of persona_handler_filtered_replies_total).
BLOCKLIST_RULE = "blocklist"
RESERVED_RULE_NAMES = frozenset({BLOCKLIST_RULE, "phone", "email", "card", "url", "timeout"})
PATTERN_FLAGS = regex.IGNORECASE | regex.VERSION1  # VERSION1: full Unicode case folding (Ё/ё, ß/SS)


class PatternRule(BaseModel):
    """A regular expression (Python `regex` syntax, case-insensitive) a reply must not match."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=RULE_NAME_PATTERN, description="the rule's name in metrics and errors")
    regex: str = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _compiles(self) -> PatternRule:
        if self.name in RESERVED_RULE_NAMES:
            raise ValueError(f"rule {self.name!r}: the name is reserved for the filter's own rules")
        try:
            regex.compile(self.regex, PATTERN_FLAGS)
        except regex.error as exc:
            raise ValueError(f"rule {self.name!r}: invalid regular expression {self.regex!r}: {exc}") from None
        return self


class ReplyFilterRules(BaseModel):
    """Blocked words and phrases, patterns, the PII kinds to block, and what to say instead."""

    model_config = ConfigDict(extra="forbid")

    blocklist: list[str] = Field(default_factory=list, max_length=1000,
                                 description="words or phrases, matched as whole words, case-insensitive")
    patterns: list[PatternRule] = Field(default_factory=list, max_length=100)
    pii: list[PiiKind] = Field(default_factory=list, description="block replies holding a phone, e-mail, card number or URL")
    fallback: str | None = Field(None, min_length=1, max_length=500, description="the reply sent instead of a blocked one")

    @field_validator("blocklist")
    @classmethod
    def _words(cls, words: list[str]) -> list[str]:
        for word in words:
            if not word.strip() or len(word) > 200:
                raise ValueError(f"blocklist entry {word[:40]!r}: a word or phrase of 1-200 characters")
        return words

    @model_validator(mode="after")
    def _unique_names(self) -> ReplyFilterRules:
        names = [rule.name for rule in self.patterns]
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"rule {twice!r} is named twice")
        return self
