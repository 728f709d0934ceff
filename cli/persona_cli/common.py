"""What every command shares: how long-running steps log."""

from __future__ import annotations

import logging


def log_steps(fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """Show the INFO-level steps of long work (training, serving start-up) on stderr; not httpx's
    line per request (a server start-up polls its models' readiness several times a second)."""
    logging.basicConfig(level=logging.INFO, format=fmt)
    logging.getLogger("httpx").setLevel(logging.WARNING)
