"""The `persona` application: the command groups put together, and user errors made one line."""

from __future__ import annotations

import sys

import typer

from persona_cli import bot, cluster, data, serving, training
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


for group in (data, training, serving, bot, cluster):
    app.add_typer(group.app)


def main() -> None:
    """Entry point: user-facing errors become one line on stderr and exit status 2."""
    try:
        app()
    except PersonaError as exc:
        print(f"persona: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"persona: error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("persona: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
