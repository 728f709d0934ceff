"""Persona knowledge: facts about the persona, and the ONE retrieval that picks them per message.

A persona's facts ("Работаю DevOps-инженером в Яндексе", "Живу в Казани") come from Markdown or
plain-text files and inline lists (`persona train --knowledge FILE`, the PersonaModel's `knowledge`
section). Training saves them into the run directory as `knowledge.json`, `persona package` copies
that into the version folder (contract 1: `STORE/NAME/vN/knowledge.json`), and the serving handler
loads it once per version - so a rollback brings the old facts back with the old weights.

`retrieve` picks the facts for a conversation; training and the handler both call it, so the
model learns to use facts in exactly the input shape it sees at serving time. Ranking is BM25 from
`bm25s` (maintained, numpy only, sparse scores: ~0.1 ms per query at 10,000 facts) over Snowball
stems from `PyStemmer` (the maintained C Snowball stemmers). Snowball keeps a verb's thematic vowel
("работаю" -> "работа") and drops it from the noun ("работа" -> "работ"), so stems lose trailing
vowels too: "работаю" finds "работа".
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from personafleet.errors import PersonaError, first_error
from personafleet.prompt import CONTEXT_TURNS, SENTENCE_END, Turn

log = logging.getLogger(__name__)

KNOWLEDGE_FILE = "knowledge.json"
MAX_FILE_BYTES = 4 * 1024 * 1024  # ~20,000 facts of Cyrillic text; larger is a mistake, not knowledge
MAX_FACTS = 20_000
DEFAULT_TOP_K = 3
DEFAULT_MAX_CHARS = 300  # the facts' share of the prompt; the context keeps its own budget (CONTEXT_CHARS)

_WORD = re.compile(r"\w+")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_VOWELS = "аеёиоуыэюя"


class Knowledge(BaseModel):
    """A persona's facts and how many of them a prompt may carry (`top_k` facts, `max_chars` in all)."""

    model_config = ConfigDict(extra="forbid")

    facts: list[str] = Field(min_length=1, max_length=MAX_FACTS)
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=20, description="most facts per prompt")
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=20, le=2000, description="characters of facts per prompt")
    _index: Any = PrivateAttr(default=None)

    @field_validator("facts")
    @classmethod
    def _distinct(cls, facts: list[str]) -> list[str]:
        seen: set[str] = set()
        for fact in facts:
            key = _fact_key(fact)
            if not key:
                raise ValueError("a fact is empty")
            if key in seen:
                raise ValueError(f"duplicate fact {fact[:60]!r}")
            seen.add(key)
        return facts

    @model_validator(mode="after")
    def _fit_budget(self) -> Knowledge:
        for fact in self.facts:
            if len(fact) > self.max_chars:
                raise ValueError(f"fact {fact[:40]!r}... is {len(fact)} characters, over max_chars {self.max_chars}")
        return self


class KnowledgeSource(BaseModel):
    """Where a training run's facts come from (train.yaml `knowledge:`, the PersonaModel's section):
    files (Markdown bullets or one fact per line) and/or inline facts."""

    model_config = ConfigDict(extra="forbid")

    files: list[Path] = Field(default_factory=list)
    facts: list[str] = Field(default_factory=list)
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=20)
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=20, le=2000)

    def build(self) -> Knowledge:
        """Read the files and merge them with the inline facts; see `build_knowledge`."""
        return build_knowledge(self.files, self.facts, top_k=self.top_k, max_chars=self.max_chars)


def _fact_key(fact: str) -> str:
    """What makes two facts the same: case, spacing and a final full stop do not count."""
    return " ".join(fact.casefold().split()).rstrip("".join(SENTENCE_END) + " ")


def parse_facts(text: str) -> list[tuple[int, str]]:
    """(line number, fact) for each fact of a Markdown or plain-text file: one fact per line, list
    markers (`-`, `*`, `+`, `1.`) dropped; blank lines and `#` headings are not facts."""
    facts = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fact = " ".join(_BULLET.sub("", line).split())
        if fact:
            facts.append((number, fact))
    return facts


def read_facts(path: Path) -> list[tuple[int, str]]:
    """The facts of one file, or a one-line error naming the file (and the line, for bad bytes)."""
    if path.is_dir():
        raise PersonaError(f"{path}: is a directory, not a knowledge file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PersonaError(f"{path}: knowledge file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PersonaError(f"{path}: no such knowledge file") from None
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read knowledge file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PersonaError(f"{path}:{line}: not UTF-8 text") from None
    facts = parse_facts(text)
    if not facts:
        raise PersonaError(f"{path}: no facts (one per line or as a Markdown list)")
    return facts


def build_knowledge(
    files: Sequence[Path], inline: Sequence[str] = (), *,
    top_k: int = DEFAULT_TOP_K, max_chars: int = DEFAULT_MAX_CHARS,
) -> Knowledge:
    """Facts of the files (in order) then the inline ones. Duplicates are dropped with a warning
    (documented trimming: the same fact twice says nothing new); an overlong fact, too many facts
    or none at all is an error that names where the fact is."""
    entries = [(f"{path}:{number}", fact) for path in files for number, fact in read_facts(path)]
    entries += [(f"inline fact {i + 1}", " ".join(fact.split())) for i, fact in enumerate(inline)]
    seen: set[str] = set()
    facts: list[str] = []
    for where, fact in entries:
        key = _fact_key(fact)
        if not key:
            raise PersonaError(f"{where}: empty fact")
        if len(fact) > max_chars:
            raise PersonaError(f"{where}: fact is {len(fact)} characters, over the {max_chars}-character "
                               f"budget of facts per prompt (shorten it or raise max_chars)")
        if key not in seen:
            seen.add(key)
            facts.append(fact)
    if len(entries) > len(facts):
        log.warning("knowledge: %d duplicate fact(s) dropped", len(entries) - len(facts))
    if not facts:
        raise PersonaError("no facts: the knowledge files and inline list are empty")
    if len(facts) > MAX_FACTS:
        raise PersonaError(f"{len(facts)} facts, over the limit of {MAX_FACTS}")
    return Knowledge(facts=facts, top_k=top_k, max_chars=max_chars)


# --- retrieval --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _stemmers() -> tuple[Any, Any, frozenset[str]]:
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_RUSSIAN

    return Stemmer.Stemmer("russian"), Stemmer.Stemmer("english"), frozenset(STOPWORDS_RUSSIAN + STOPWORDS_EN)


def terms(text: str) -> list[str]:
    """The index terms of a text: lower-cased words less stop words, Snowball-stemmed (Russian, or
    English for Latin words), Cyrillic stems without trailing vowels ("работаю", "работа" -> "работ")."""
    russian, english, stop = _stemmers()
    out = []
    for word in _WORD.findall(text.lower().replace("ё", "е")):
        if word in stop:
            continue
        if word.isascii():
            out.append(english.stemWord(word))
            continue
        stem = russian.stemWord(word)
        trimmed = stem.rstrip(_VOWELS)
        out.append(trimmed if len(trimmed) >= 3 else stem)
    return out


def _index(knowledge: Knowledge) -> Any:
    """The BM25 index of the facts, built on first use and kept with the Knowledge object."""
    if knowledge._index is None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
        index = bm25s.BM25()
        index.index([terms(fact) or [""] for fact in knowledge.facts], show_progress=False)
        knowledge._index = index
    return knowledge._index


def retrieve(knowledge: Knowledge | None, turns: Sequence[Turn], max_turns: int = CONTEXT_TURNS) -> list[str]:
    """The facts for the persona's next reply after `turns`: BM25 over the newest `max_turns` turns,
    best first (ties: file order), at most `top_k`, skipping any that would overrun `max_chars`.
    Facts sharing no term with the conversation are never picked. Training and serving call this."""
    if knowledge is None or not turns:
        return []
    import numpy as np

    index = _index(knowledge)
    query = {term for turn in turns[-max_turns:] for term in terms(turn.text)}
    ids = sorted(index.vocab_dict[term] for term in query if term in index.vocab_dict and term)
    if not ids:
        return []
    scores = index.get_scores_from_ids(ids)
    hits = np.flatnonzero(scores > 0)
    ranked = hits[np.lexsort((hits, -scores[hits]))]
    picked, used = [], 0
    for i in ranked:
        fact = knowledge.facts[i]
        if used + len(fact) <= knowledge.max_chars:
            picked.append(fact)
            used += len(fact)
            if len(picked) == knowledge.top_k:
                break
    return picked


# --- the run directory and the version folder -------------------------------------------------
def save(knowledge: Knowledge, directory: Path) -> Path:
    """Write `directory/knowledge.json` (training writes it into the run directory)."""
    path = directory / KNOWLEDGE_FILE
    path.write_text(knowledge.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def load(directory: Path) -> Knowledge | None:
    """The facts of a run directory or version folder; None when it has none (trained without)."""
    path = directory / KNOWLEDGE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaError(f"{path}: cannot read ({exc})") from None
    try:
        return Knowledge.model_validate_json(text)
    except ValidationError as exc:
        raise PersonaError(f"{path}: not a knowledge file ({first_error(exc, 'knowledge')})") from None


def copy(run_dir: Path, version_dir: Path) -> bool:
    """Copy a run's knowledge.json into a version folder (`persona package`); False when the run
    was trained without facts. Validated first: a broken file must not be published."""
    if load(run_dir) is None:
        return False
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / KNOWLEDGE_FILE, version_dir / KNOWLEDGE_FILE)
    return True


def count(directory: Path) -> int:
    """How many facts a version folder carries (0 without knowledge.json); for status and `/persona`."""
    knowledge = load(directory)
    return len(knowledge.facts) if knowledge else 0

