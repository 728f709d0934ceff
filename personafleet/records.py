"""Dialogue records: the unit of training data (DESIGN.md, data flow step 2).

One record is one training example: the turns that came before a reply, and the reply.
`persona prepare` writes them as JSON Lines; `persona train` reads them; the bot's
`export-feedback` writes them from well-rated conversations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personafleet.errors import PersonaError, first_error


class Utterance(BaseModel):
    """A message by one author: `author` is the export's `from_id` (e.g. "user123")."""

    model_config = ConfigDict(extra="forbid")

    author: str
    name: str
    text: str = Field(min_length=1)


class Source(BaseModel):
    """Where the reply came from: the export's chat id and the reply message's id."""

    model_config = ConfigDict(extra="forbid")

    chat_id: int
    message_id: int


class DialogueRecord(BaseModel):
    """Context turns (oldest first, newest last) and the reply that answered them."""

    model_config = ConfigDict(extra="forbid")

    context: list[Utterance] = Field(min_length=1)
    reply: Utterance
    source: Source

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)


def write_records(path: Path, records: Iterable[DialogueRecord]) -> int:
    """Write records as JSON Lines (UTF-8, one per line); returns how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(record.to_json() + "\n")
            count += 1
    return count


def iter_records(path: Path) -> Iterator[DialogueRecord]:
    """Read a JSON Lines file of records, failing with the file and line of the first bad one."""
    try:
        handle = path.open("rb")  # decoded line by line, so a bad byte is reported at its line
    except OSError as exc:
        raise PersonaError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PersonaError(f"{path}:{number}: not UTF-8 text") from None
            try:
                yield DialogueRecord.model_validate_json(line)
            except ValidationError as exc:
                raise PersonaError(f"{path}:{number}: not a dialogue record ({first_error(exc, 'record')})") from None


def read_records(path: Path) -> list[DialogueRecord]:
    return list(iter_records(path))
