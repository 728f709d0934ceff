"""The operator: `persona operator` (persona_operator)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer()


@app.command("operator")
def operator_command(
    namespace: Annotated[Optional[str], typer.Option(help="Namespace to watch (default: $PERSONA_NAMESPACE, else 'default').")] = None,
    standalone: Annotated[bool, typer.Option("--standalone/--peering", help="Run alone (one replica) or coordinate through kopf peering.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every kopf step.")] = False,
) -> None:
    """Run the PersonaModel operator: train on every spec change, roll out, report status. Other settings: PERSONA_* environment variables (docs/operator.md)."""
    from persona_operator.runner import run
    from persona_operator.settings import Settings

    settings = Settings.from_env()
    if namespace:
        settings = settings.model_copy(update={"namespace": namespace})
    run(settings, standalone=standalone, verbose=verbose)
