"""`persona`: one command-line entry point for every step. It only parses arguments and calls
the parts; heavy libraries are imported inside each command so `persona --help` stays fast.

Each command's block is owned by the part it calls (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from personafleet.errors import PersonaError

app = typer.Typer(
    name="persona",
    help="Turn Telegram chat history into persona chatbots served by TorchServe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Turn Telegram chat history into persona chatbots served by TorchServe."""


# --- data: persona_training.prepare -------------------------------------------------------
@app.command()
def prepare(
    exports: Annotated[list[Path], typer.Argument(help="Telegram Desktop JSON exports (result.json).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for train.jsonl, val.jsonl, stats.json.")],
    persona_id: Annotated[Optional[str], typer.Option(help="Keep only replies by this from_id (e.g. user123).")] = None,
    context_turns: Annotated[int, typer.Option(min=1, help="Most context turns per record.")] = 3,
    window_minutes: Annotated[float, typer.Option(min=0, help="Preceding messages within this window are context.")] = 180,
    max_message_chars: Annotated[int, typer.Option(min=1, help="Longer replies are not used as targets.")] = 200,
    max_context_chars: Annotated[int, typer.Option(min=1, help="Character budget of a record's context.")] = 500,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of conversations held out.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 13,
    scrub: Annotated[bool, typer.Option("--scrub", help="Replace e-mails, phone numbers and @mentions with placeholders.")] = False,
) -> None:
    """Turn Telegram exports into dialogue records for training."""
    from persona_training.prepare import PrepareOptions, run_prepare

    options = PrepareOptions(
        persona_id=persona_id,
        context_turns=context_turns,
        window_minutes=window_minutes,
        max_message_chars=max_message_chars,
        max_context_chars=max_context_chars,
        val_fraction=val_fraction,
        seed=seed,
        scrub=scrub,
    )
    run_prepare(exports, out, options)


# --- base model and training: persona_training (init-base, train) ------------------------
# --- packaging: persona_training.package (package) ---------------------------------------
# --- serving: persona_serving (serve, chat) ----------------------------------------------
# --- bot: persona_bot (bot, export-feedback) ---------------------------------------------
# --- operator: persona_operator (operator) -----------------------------------------------


def main() -> None:
    """Entry point: user-facing errors become one line on stderr and exit status 2."""
    try:
        app()
    except PersonaError as exc:
        print(f"persona: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("persona: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
