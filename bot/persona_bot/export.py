"""`persona export-feedback`: replies people rated 👍 (more up- than down-votes) in chats whose
settings allow it become dialogue records in `DIR/train.jsonl`, the format `persona train --data
DIR` reads. `DIR/stats.json` and the printed summary say how many rated exchanges each privacy or
rating rule kept out (`persona_bot.store.FEEDBACK_RULES`).

In a record the persona's turns and its reply share the author `persona:<name>`, so
`record_turns` gives them the persona role; everything users said has author `user`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from persona_bot.store import Exchange, Store, StoreUnavailable
from personafleet.errors import PersonaError
from personafleet.records import DialogueRecord, Source, Utterance, write_records


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


async def _rated(database_url: str, persona: str | None) -> tuple[list[Exchange], dict[str, int]]:
    store = Store(database_url, migrates=False)  # a training Job's role reads, never migrates
    where = urlsplit(database_url).hostname or "localhost"
    try:
        await store.open()
        return await store.feedback_for_training(persona)
    except (StoreUnavailable, asyncpg.PostgresError) as exc:
        raise PersonaError(f"cannot read the bot database at {where}: {exc}") from None
    finally:
        await store.close()


def export_feedback(database_url: str, out: Path, persona: str | None = None) -> dict:
    """Write the exchanges the rules let through to `out/train.jsonl` and the counts to
    `out/stats.json`; print a summary; return the counts."""
    exchanges, kept_out = asyncio.run(_rated(database_url, persona))
    out.mkdir(parents=True, exist_ok=True)
    stats = {"exported": write_records(out / "train.jsonl", (to_record(e) for e in exchanges)), "kept_out": kept_out}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    reasons = ", ".join(f"{rule} {count}" for rule, count in kept_out.items())
    print(f"wrote {stats['exported']} rated exchange(s) to {out / 'train.jsonl'}; kept out: {reasons}")
    return stats
