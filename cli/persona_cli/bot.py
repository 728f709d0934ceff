"""The bot: `persona bot|export-feedback` (persona_bot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_cli.common import log_steps
from personafleet.errors import PersonaError

app = typer.Typer()


@app.command()
def bot() -> None:
    """Run the Telegram bot (configured by environment variables, see docs/bot.md)."""
    import asyncio

    from persona_bot.settings import load_settings

    settings = load_settings()  # before the heavy imports: a bad variable fails fast
    from persona_bot.service import run_bot

    log_steps()
    asyncio.run(run_bot(settings))


@app.command("export-feedback")
def export_feedback(
    out: Annotated[Path, typer.Option("--out", help="Directory to write train.jsonl into.")],
    persona: Annotated[Optional[str], typer.Option(help="Only replies of this persona.")] = None,
    database_url: Annotated[
        Optional[str], typer.Option(envvar="DATABASE_URL", help="The bot's database (default: $DATABASE_URL).")
    ] = None,
) -> None:
    """Write replies rated 👍 in the bot as dialogue records for the next training run."""
    from persona_bot.export import export_feedback as run_export

    if not database_url:
        raise PersonaError("no database: pass --database-url or set DATABASE_URL")
    log_steps("%(levelname)s %(message)s")
    run_export(database_url, out, persona)
