"""`persona export-feedback`: replies people rated 👍 (more up- than down-votes) become dialogue
records in `DIR/train.jsonl`, the format `persona train --data DIR` reads.

In a record the persona's turns and its reply share the author `persona:<name>`, so
`record_turns` gives them the persona role; everything users said has author `user`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from persona_bot.store import Exchange, Store, StoreUnavailable
from personafleet.errors import PersonaError
from personafleet.records import DialogueRecord, Source, Utterance, write_records

logger = logging.getLogger(__name__)


def to_record(exchange: Exchange) -> DialogueRecord:
    def said(role: str, text: str) -> Utterance:
        if role == "persona":
            return Utterance(author=f"persona:{exchange.persona}", name=exchange.persona, text=text)
        return Utterance(author="user", name="user", text=text)

    context = [said(turn.role, turn.text) for turn in exchange.context]
    context.append(said("user", exchange.message))
    return DialogueRecord(
        context=context,
        reply=said("persona", exchange.reply),
        source=Source(chat_id=exchange.chat_id, message_id=exchange.message_id),
    )


async def _rated(database_url: str, persona: str | None) -> list[Exchange]:
    store = Store(database_url)
    where = urlsplit(database_url).hostname or "localhost"
    try:
        await store.open()
        return await store.rated_exchanges(persona)
    except (StoreUnavailable, asyncpg.PostgresError) as exc:
        raise PersonaError(f"cannot read the bot database at {where}: {exc}") from None
    finally:
        await store.close()


def export_feedback(database_url: str, out: Path, persona: str | None = None) -> int:
    """Write the positively rated exchanges to `out/train.jsonl`; returns how many."""
    exchanges = asyncio.run(_rated(database_url, persona))
    out.mkdir(parents=True, exist_ok=True)
    count = write_records(out / "train.jsonl", (to_record(exchange) for exchange in exchanges))
    logger.info("Wrote %d positively rated exchange(s) to %s", count, out / "train.jsonl")
    return count
