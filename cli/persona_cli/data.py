"""`persona prepare`: Telegram exports -> dialogue records (persona_training.prepare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from personafleet.prompt import CONTEXT_CHARS, CONTEXT_TURNS, CONTEXT_WINDOW_SECONDS, MERGE_GAP_SECONDS, MESSAGE_CHARS

app = typer.Typer()


@app.command()
def prepare(
    exports: Annotated[list[Path], typer.Argument(help="Telegram Desktop JSON exports (result.json).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for train.jsonl, val.jsonl, stats.json.")],
    persona_id: Annotated[Optional[str], typer.Option(help="Keep only replies by this from_id (e.g. user123).")] = None,
    context_turns: Annotated[int, typer.Option(min=1, help="Most context turns per record.")] = CONTEXT_TURNS,
    window_minutes: Annotated[float, typer.Option(min=0, help="Preceding messages within this window are context.")] = CONTEXT_WINDOW_SECONDS / 60,
    merge_gap_seconds: Annotated[float, typer.Option(min=0, help="Consecutive messages of one author this close are one turn.")] = MERGE_GAP_SECONDS,
    max_message_chars: Annotated[int, typer.Option(min=1, help="Longer replies are not used as targets; longer context turns are cut.")] = MESSAGE_CHARS,
    max_context_chars: Annotated[int, typer.Option(min=1, help="Character budget of a record's context.")] = CONTEXT_CHARS,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of records held out for validation, in whole conversations.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 13,
    scrub: Annotated[bool, typer.Option("--scrub", help="Replace e-mails, phone numbers and @mentions with placeholders.")] = False,
) -> None:
    """Turn Telegram exports into dialogue records for training."""
    from persona_training.prepare import PrepareOptions, run_prepare

    options = PrepareOptions(
        persona_id=persona_id,
        context_turns=context_turns,
        window_minutes=window_minutes,
        merge_gap_seconds=merge_gap_seconds,
        max_message_chars=max_message_chars,
        max_context_chars=max_context_chars,
        val_fraction=val_fraction,
        seed=seed,
        scrub=scrub,
    )
    run_prepare(exports, out, options)
