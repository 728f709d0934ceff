"""The bot's memory in PostgreSQL: chat settings, per-persona history (JSONB), replies and votes.

Every method either works or raises `StoreUnavailable`, so callers have one thing to handle when
the database is down; the pool reconnects by itself once it is back. The schema is created and
migrated lazily by the first connection that succeeds, so the bot can start before the database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import asyncpg

from persona_bot import metrics
from personafleet.errors import PersonaError
from personafleet.prompt import CONTEXT_WINDOW_SECONDS, PromptTemplate, TimedTurn, Turn

logger = logging.getLogger(__name__)

# Errors that mean "the database is not there right now" rather than "this query is wrong".
OUTAGE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk or memory full
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a replica promoted or demoted mid-failover
    asyncpg.exceptions.UndefinedTableError,  # the database was recreated: migrate again (below)
)
# Any constant works; it keeps two bot replicas from migrating at the same time.
MIGRATION_LOCK = 7_326_101
# History retention: a chat's history holds every message the bot saw (group chatter included)
# only while it can still be a reply's context: the newest HISTORY_MESSAGES messages within the
# context window of the newest one. Bursts merge into one turn when the history is used, so the
# prompt's 3 turns may span many messages; 50 covers them.
HISTORY_MESSAGES = 50
# Appends $3 (a JSONB list of turns) to the history of chat $1 and persona $2 when $6, keeping the
# newest $4 turns no older than Unix time $5. Appending in SQL (rather than writing back a history
# loaded earlier) keeps what other replicas stored meanwhile, and a history cleared meanwhile stays
# cleared.
APPEND_TURNS = (
    "INSERT INTO histories (chat_id, persona, turns) SELECT $1, $2, $3 WHERE $6"
    " ON CONFLICT (chat_id, persona) DO UPDATE SET updated_at = now(), turns = ("
    "  SELECT coalesce(jsonb_agg(turn ORDER BY position), '[]'::jsonb)"
    "  FROM jsonb_array_elements(histories.turns || EXCLUDED.turns) WITH ORDINALITY AS newest(turn, position)"
    "  WHERE position > jsonb_array_length(histories.turns || EXCLUDED.turns) - $4"
    "  AND (turn ->> 'time')::float8 >= $5)"
)


class StoreUnavailable(Exception):
    """The database cannot be reached; the caller goes on without it."""


@dataclass(frozen=True)
class ChatSettings:
    persona: str | None = None  # None: the bot's default persona
    insanity: bool = False
    feedback_training: bool | None = None  # None: no choice made (FEEDBACK_RULES)

    def trains_on_feedback(self, private: bool) -> bool:
        """Whether this chat's rated exchanges become training data (FEEDBACK_RULES)."""
        return self.feedback_training if self.feedback_training is not None else not private


# Why a rated exchange stays out of `persona export-feedback`, checked in this order. Forgotten: the
# chat said /clear after it. A chat that made no choice: private chats (positive Telegram ids) stay
# out, groups are in.
FEEDBACK_RULES = ("forgotten", "not_rated_up", "chat_opted_out", "private_chat_not_opted_in")
FEEDBACK_VERDICT = (
    "CASE WHEN r.forgotten THEN 'forgotten'"
    " WHEN sum(v.value) <= 0 THEN 'not_rated_up'"
    " WHEN c.feedback_training IS FALSE THEN 'chat_opted_out'"
    " WHEN c.feedback_training IS NULL AND r.chat_id > 0 THEN 'private_chat_not_opted_in'"
    " ELSE 'exported' END"
)
# Every column `persona export-feedback` reads, and all its role may read (`grant_export_role`).
EXPORT_READS: dict[str, tuple[str, ...]] = {
    "schema_migrations": ("version",),
    "replies": ("id", "chat_id", "message_id", "persona", "model_version", "context", "message", "reply", "forgotten"),
    "votes": ("reply_id", "value"),
    "chats": ("chat_id", "feedback_training"),
}


@dataclass(frozen=True)
class ExportRole:
    """The login `persona export-feedback` runs as in training Jobs: SELECT on `EXPORT_READS` only."""

    name: str
    password: str


@dataclass(frozen=True)
class Exchange:
    """One answered message: what the model saw and what the bot sent."""

    chat_id: int
    message_id: int  # the reply's Telegram message id (what votes point at)
    persona: str
    model_version: str
    context: list[Turn]
    message: str  # the newest turn as the model saw it (a burst of messages merged)
    reply: str
    reply_time: float = 0.0  # Unix time of the reply (Telegram's), kept in the history
    voice: bool = False  # the message was a voice message (audio, video note): `message` is its transcript


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in the package, oldest first."""
    folder = resources.files("persona_bot") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply the migrations this database has not seen yet; returns the versions applied."""
    applied: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version not in done:
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(version)
    if applied:
        logger.info("Database migrated to version %d", applied[-1])
    return applied


async def check_schema(connection: asyncpg.Connection) -> None:
    """What a reader that may not migrate (the export role) does instead: the database must be at
    least at the newest migration this code knows, or its queries would miss columns."""
    have = await connection.fetchval("SELECT max(version) FROM schema_migrations") or 0
    need = migrations()[-1][0]
    if have < need:
        raise PersonaError(f"the bot database is at schema version {have}, this needs {need}: "
                           "start the bot once (it migrates the database), then export again")


async def grant_export_role(connection: asyncpg.Connection, role: ExportRole) -> None:
    """Create or update the export role: a login with its password, SELECT on `EXPORT_READS` and no
    other privilege here (no history, no write). Needs CREATEROLE; the bot runs it after migrating."""
    name, password, database, schema = await connection.fetchrow(  # quoted by the server itself
        "SELECT quote_ident($1), quote_literal($2), quote_ident(current_database()), quote_ident(current_schema())",
        role.name, role.password)
    async with connection.transaction():
        exists = await connection.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role.name)
        await connection.execute(f"{'ALTER' if exists else 'CREATE'} ROLE {name} LOGIN PASSWORD {password}"
                                 " NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT")
        await connection.execute(f"GRANT CONNECT ON DATABASE {database} TO {name}")
        await connection.execute(f"GRANT USAGE ON SCHEMA {schema} TO {name}")
        await connection.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {name}")
        await connection.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {name}")
        for table, columns in EXPORT_READS.items():
            present = await connection.fetchval(  # column grants outlive a table-wide REVOKE
                "SELECT string_agg(quote_ident(attname), ', ') FROM pg_attribute"
                " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", table)
            await connection.execute(f"REVOKE ALL ({present}) ON {table} FROM {name}")
            await connection.execute(f"GRANT SELECT ({', '.join(columns)}) ON {table} TO {name}")


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _turns(rows: object) -> list[Turn]:
    return [Turn.model_validate(turn) for turn in rows or []]


def _history(rows: object) -> list[TimedTurn]:
    return [TimedTurn.model_validate(turn) for turn in rows or []]


def _dump(turns: list[Turn]) -> list[dict]:
    return [turn.model_dump() for turn in turns]


def _appending(chat_id: int, persona: str, turn: TimedTurn, update: bool = True) -> tuple:
    """APPEND_TURNS' parameters $1-$6 for one turn: the retention window ends at its time."""
    stored = turn.model_dump(exclude_none=True)
    return chat_id, persona, [stored], HISTORY_MESSAGES, turn.time - CONTEXT_WINDOW_SECONDS, update


class Store:
    """Postgres-backed conversation store with a connection pool."""

    def __init__(self, dsn: str, *, budget: PromptTemplate | None = None, timeout: float = 3.0, pool_size: int = 10,
                 export_role: ExportRole | None = None, migrates: bool = True):
        self.dsn = dsn
        self.budget = budget or PromptTemplate()
        self.timeout = timeout
        self.pool_size = pool_size
        self.export_role = export_role  # created or updated after migrating, when given
        self.migrates = migrates  # False: a reader that may not (the export role) checks the schema instead
        self.available = True
        self._pool: asyncpg.Pool | None = None
        self._migrated = False
        self._told: set[int] = set()  # chats already told about the current outage

    async def open(self) -> None:
        """Create the pool. It connects on demand, so a database that is down now is not an
        error: the first operation after it is back connects (and migrates)."""
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=0,
            max_size=self.pool_size,
            timeout=self.timeout,
            command_timeout=self.timeout,
            init=_init_connection,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one operation (the pool's; the benchmark's baseline overrides this)."""
        assert self._pool is not None, "Store.open() first"
        async with self._pool.acquire(timeout=self.timeout) as connection:
            yield connection

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A migrated connection; outages become `StoreUnavailable` and flip `available`."""
        try:
            async with self._acquire() as connection:
                if not self._migrated:
                    await self._prepare(connection)
                    self._migrated = True
                yield connection
        except OUTAGE_ERRORS as exc:
            if isinstance(exc, asyncpg.exceptions.UndefinedTableError):
                self._migrated = False
            metrics.STORE_ERRORS.inc()
            metrics.STORE_UP.set(0)
            if self.available:
                logger.warning("Database unavailable: %s", exc.__class__.__name__)
            self.available = False
            raise StoreUnavailable(str(exc) or exc.__class__.__name__) from exc
        metrics.STORE_UP.set(1)
        if not self.available:
            logger.info("Database is back")
            self.available = True
            self._told.clear()

    async def _prepare(self, connection: asyncpg.Connection) -> None:
        """Once per database: migrate it and keep the export role in step with the schema, or - for
        a reader that may not migrate - check the schema is new enough."""
        if not self.migrates:
            return await check_schema(connection)
        await migrate(connection)
        if self.export_role is None:
            return
        try:
            await grant_export_role(connection, self.export_role)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, OUTAGE_ERRORS):
                raise
            logger.error("Cannot set up the export role %s (%s): training Jobs with includeFeedback will fail "
                         "to export; grant the bot's user CREATEROLE or create the role by hand (docs/bot.md)",
                         self.export_role.name, exc)

    def outage_notice_due(self, chat_id: int) -> bool:
        """True once per chat per outage: the first answer without history says so."""
        if self.available or chat_id in self._told:
            return False
        self._told.add(chat_id)
        return True

    async def ping(self) -> None:
        """Connect (and migrate) now rather than at the first message."""
        async with self._connection() as connection:
            await connection.fetchval("SELECT 1")

    async def chat_settings(self, chat_id: int) -> ChatSettings:
        async with self._connection() as connection:
            row = await connection.fetchrow(
                "SELECT persona, insanity, feedback_training FROM chats WHERE chat_id = $1", chat_id
            )
        return ChatSettings(row["persona"], row["insanity"], row["feedback_training"]) if row else ChatSettings()

    async def _set_chat(self, chat_id: int, column: Literal["persona", "insanity", "feedback_training"],
                        value: object) -> None:
        """Set one chat setting, creating the chat's row if needed (`column` is never user input)."""
        async with self._connection() as connection:
            await connection.execute(
                f"INSERT INTO chats (chat_id, {column}) VALUES ($1, $2) ON CONFLICT (chat_id)"
                f" DO UPDATE SET {column} = EXCLUDED.{column}, updated_at = now()",
                chat_id,
                value,
            )

    async def set_persona(self, chat_id: int, persona: str) -> None:
        await self._set_chat(chat_id, "persona", persona)

    async def set_insanity(self, chat_id: int, insanity: bool) -> None:
        await self._set_chat(chat_id, "insanity", insanity)

    async def set_feedback_training(self, chat_id: int, allowed: bool) -> None:
        await self._set_chat(chat_id, "feedback_training", allowed)

    async def history(self, chat_id: int, persona: str) -> list[TimedTurn]:
        """The stored turns, oldest first, with their times (the caller applies the window)."""
        async with self._connection() as connection:
            turns = await connection.fetchval(
                "SELECT turns FROM histories WHERE chat_id = $1 AND persona = $2", chat_id, persona
            )
        return _history(turns)

    async def hear(self, chat_id: int, persona: str, turn: TimedTurn) -> list[TimedTurn]:
        """Keep a message the bot saw in the chat's history (within the retention rule,
        HISTORY_MESSAGES) and return the history with it, oldest first: one round trip."""
        async with self._connection() as connection:
            turns = await connection.fetchval(APPEND_TURNS + " RETURNING turns", *_appending(chat_id, persona, turn))
        return _history(turns)

    async def forget_chat(self, chat_id: int) -> None:
        """/clear: the chat's history with every persona is deleted, and every reply recorded so far
        keeps no text (`forgotten`): votes on it still count, `persona export-feedback` never exports it."""
        async with self._connection() as connection, connection.transaction():
            await connection.execute("DELETE FROM histories WHERE chat_id = $1", chat_id)
            await connection.execute("UPDATE replies SET context = '[]', message = '', reply = '', forgotten = true"
                                     " WHERE chat_id = $1 AND NOT forgotten", chat_id)

    async def record(self, exchange: Exchange, *, update_history: bool = True) -> None:
        """Keep the reply (for feedback) and append it to the chat's history, where `hear` put the
        message it answers. One statement, one round trip. `update_history=False` when the
        history could not be loaded (an outage): the reply is then not part of it."""
        reply = TimedTurn(role="persona", text=exchange.reply, time=exchange.reply_time)
        async with self._connection() as connection:
            await connection.execute(
                f"WITH history AS ({APPEND_TURNS})"
                " INSERT INTO replies (chat_id, message_id, persona, model_version, context, message, reply, voice)"
                " VALUES ($1, $7, $2, $8, $9, $10, $11, $12)",
                *_appending(exchange.chat_id, exchange.persona, reply, update_history),
                exchange.message_id,
                exchange.model_version,
                _dump(exchange.context),
                exchange.message,
                exchange.reply,
                exchange.voice,
            )

    async def take_turn(self, sender_id: int, capacity: int, period: float) -> float:
        """One update of `sender_id` against the rate limit every replica shares (`capacity` updates,
        refilled evenly over `period` seconds): 0 when it is allowed (and counted), else the seconds
        until one would be. GCRA in one statement: a sender's row holds when its bucket is full again
        plus one interval (`tat`); an update is allowed when that stays within `period` of now, and
        only then moves `tat` - the row lock makes concurrent replicas take turns."""
        interval = period / capacity
        async with self._connection() as connection:
            return float(await connection.fetchval(
                "WITH hit AS ("
                "  INSERT INTO rate_limits AS bucket (sender_id, tat) VALUES ($1, now() + make_interval(secs => $2))"
                "  ON CONFLICT (sender_id) DO UPDATE SET tat = greatest(bucket.tat, now()) + make_interval(secs => $2)"
                "  WHERE greatest(bucket.tat, now()) + make_interval(secs => $2) <= now() + make_interval(secs => $3)"
                "  RETURNING 1)"
                " SELECT CASE WHEN EXISTS (SELECT 1 FROM hit) THEN 0"
                "  ELSE extract(epoch FROM (SELECT tat FROM rate_limits WHERE sender_id = $1) - now()) + $2 - $3 END",
                sender_id, interval, period,
            ))

    async def forget_full_buckets(self) -> None:
        """Rows of senders whose bucket has refilled are the same as no row: keep the table small."""
        async with self._connection() as connection:
            await connection.execute("DELETE FROM rate_limits WHERE tat < now()")

    async def vote(self, chat_id: int, message_id: int, user_id: int, value: int) -> tuple[str, str] | None:
        """Store (or change) a user's vote on a reply; the reply's persona and the version that wrote
        it, None for an unknown reply."""
        async with self._connection() as connection:
            row = await connection.fetchrow(
                "WITH target AS (SELECT id, persona, model_version FROM replies WHERE chat_id = $1 AND message_id = $2),"
                " upsert AS (INSERT INTO votes (reply_id, user_id, value) SELECT id, $3, $4 FROM target"
                "  ON CONFLICT (reply_id, user_id) DO UPDATE SET value = EXCLUDED.value, voted_at = now())"
                " SELECT persona, model_version FROM target",
                chat_id,
                message_id,
                user_id,
                value,
            )
        return (row["persona"], row["model_version"]) if row else None

    async def feedback_for_training(self, persona: str | None = None) -> tuple[list[Exchange], dict[str, int]]:
        """The rated replies that may become training data (not forgotten, more 👍 than 👎, in a chat
        whose settings allow it; oldest first, optionally of one persona), and how many rated
        replies each of FEEDBACK_RULES kept out. Reads only `EXPORT_READS`."""
        async with self._connection() as connection:
            rows = await connection.fetch(
                f"SELECT {', '.join(f'r.{column}' for column in EXPORT_READS['replies'])}, {FEEDBACK_VERDICT} AS verdict"
                " FROM replies r JOIN votes v ON v.reply_id = r.id LEFT JOIN chats c ON c.chat_id = r.chat_id"
                " WHERE $1::text IS NULL OR r.persona = $1"
                " GROUP BY r.id, c.feedback_training ORDER BY r.id",
                persona,
            )
        kept_out = {rule: sum(row["verdict"] == rule for row in rows) for rule in FEEDBACK_RULES}
        exchanges = [
            Exchange(
                chat_id=row["chat_id"],
                message_id=row["message_id"],
                persona=row["persona"],
                model_version=row["model_version"],
                context=_turns(row["context"]),
                message=row["message"],
                reply=row["reply"],
            )
            for row in rows
            if row["verdict"] == "exported"
        ]
        return exchanges, kept_out
