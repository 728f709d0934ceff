"""Reading Telegram Desktop JSON exports (DESIGN.md, data flow step 1).

Telegram Desktop writes `result.json` in two shapes: one chat (`{"name", "type", "id",
"messages": [...]}`) or a whole account (`{"chats": {"list": [chat, ...]}, "left_chats": ...}`).
A message's `text` is a plain string, or a list of strings and entity objects
(`{"type": "link"|"code"|"mention"|..., "text": ...}`). This module turns either shape into
validated `Chat` objects and leaves every decision about what makes a good record to `prepare`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from personafleet.errors import PersonaError, first_error

# Keys whose presence marks a message as carrying media (the text, if any, is a caption).
MEDIA_KEYS = frozenset(
    {"photo", "file", "media_type", "sticker_emoji", "poll", "location_information",
     "contact_information", "place_name", "game_title", "invoice_information", "todo_list"}
)
DELETED_ACCOUNT = "Deleted Account"  # how Telegram Desktop shows an author whose `from` is null


class TextEntity(BaseModel):
    """One formatted piece of a message: `type` is Telegram's entity type ("plain", "link", ...)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: str = ""
    href: str | None = None


class Message(BaseModel):
    """One message as exported. Only the fields the data step reads are kept."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: int
    type: str
    date: datetime
    date_unixtime: int | None = None
    sender: str | None = Field(None, alias="from")
    from_id: str | None = None
    text: str | list[str | TextEntity] = ""
    reply_to_message_id: int | None = None
    forwarded: bool = False
    has_media: bool = False

    @model_validator(mode="before")
    @classmethod
    def _derive_flags(cls, data: Any) -> Any:
        """Forwards and media are told by which keys exist, not by their values."""
        if isinstance(data, dict):
            data = dict(data)
            data["forwarded"] = "forwarded_from" in data or "saved_from" in data
            data["has_media"] = not MEDIA_KEYS.isdisjoint(data)
        return data

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch. Exports before 2021 lack `date_unixtime`; their `date` is
        the exporter's local time, read here as UTC (only differences between messages matter)."""
        if self.date_unixtime is not None:
            return float(self.date_unixtime)
        date = self.date if self.date.tzinfo else self.date.replace(tzinfo=timezone.utc)
        return date.timestamp()

    @property
    def author_name(self) -> str:
        return self.sender if self.sender else DELETED_ACCOUNT

    def segments(self) -> list[TextEntity]:
        """The text as entities; plain strings become `{"type": "plain"}` pieces."""
        if isinstance(self.text, str):
            return [TextEntity(type="plain", text=self.text)] if self.text else []
        return [TextEntity(type="plain", text=part) if isinstance(part, str) else part for part in self.text]


class Chat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: int
    name: str | None = None
    type: str = "unknown"
    messages: list[Message]


class AccountChats(BaseModel):
    model_config = ConfigDict(extra="ignore")

    chats: list[Chat] = Field(alias="list")


class AccountExport(BaseModel):
    """A whole-account export: every chat, including the ones the account has left."""

    model_config = ConfigDict(extra="ignore")

    chats: AccountChats
    left_chats: AccountChats | None = None


def flatten_text(text: str | list[str | TextEntity]) -> str:
    """The message text exactly as a reader sees it: strings and entity texts joined."""
    if isinstance(text, str):
        return text
    return "".join(part if isinstance(part, str) else part.text for part in text)


def load_export(path: Path) -> list[Chat]:
    """Read one export file (or a directory holding `result.json`) into its chats.

    Every problem becomes a one-line `PersonaError` naming the file."""
    if path.is_dir() and (path / "result.json").is_file():
        path = path / "result.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PersonaError(f"{path}: no such file") from None
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        document = json.loads(raw)
        return parse_export(document, str(path))
    except RecursionError:  # the decoder (and any validator) recurses once per level
        raise PersonaError(f"{path}: nested too deeply to be a Telegram export") from None
    except UnicodeDecodeError:
        raise PersonaError(f"{path}: not a UTF-8 JSON file") from None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise PersonaError(f"{path}: JSON ends unexpectedly (truncated export?)") from None
        raise PersonaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def parse_export(document: Any, origin: str = "export") -> list[Chat]:
    """Validate a decoded export of either shape; `origin` names it in errors."""
    if isinstance(document, dict) and "messages" in document:
        model: type[BaseModel] = Chat
    elif isinstance(document, dict) and "chats" in document:
        model = AccountExport
    else:
        raise PersonaError(
            f"{origin}: not a Telegram Desktop export (expected a chat with \"messages\" "
            f"or an account export with \"chats\")"
        )
    try:
        parsed = model.model_validate(document)
    except ValidationError as exc:
        raise PersonaError(f"{origin}: not a Telegram Desktop export ({first_error(exc, 'document')})") from None
    if isinstance(parsed, Chat):
        return [parsed]
    return parsed.chats.chats + (parsed.left_chats.chats if parsed.left_chats else [])
