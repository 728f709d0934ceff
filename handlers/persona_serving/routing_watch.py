"""A worker's view of the routing table (contract 2), re-read only when the file changes.

`poll()` costs one `stat` when nothing changed, so the handler calls it once per batch and
notices a switch within a batch (and TorchServe's batch delay) of the rename. A table that does
not parse is logged once and ignored: the last good table stays in force. Writers replace the
file by an atomic rename, so a half-written table is never seen here; a new inode or mtime or
size means "read again".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from personafleet.errors import PersonaError
from personafleet.routing import ROUTING_FILE, RoutingTable, parse_routing

logger = logging.getLogger(__name__)

Signature = tuple[int, int, int]


class RoutingWatch:
    def __init__(self, store: Path):
        self.path = store / ROUTING_FILE
        self.table = RoutingTable()
        self._seen: Signature | None = None

    def poll(self) -> RoutingTable | None:
        """A newly read table when the file changed and parses; None when nothing new is in force."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            signature: Signature = (0, 0, 0)
        except OSError as exc:
            if self._seen != (-1, -1, -1):
                logger.error("Cannot stat %s (%s); keeping the last good routing table", self.path, exc)
            self._seen = (-1, -1, -1)
            return None
        else:
            signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._seen:
            return None
        self._seen = signature
        if signature == (0, 0, 0):
            return None  # no table yet (or it was removed): keep what was in force
        try:
            return parse_routing(self.path.read_bytes(), str(self.path))
        except (OSError, PersonaError) as exc:
            logger.error("Ignoring the routing table: %s; the last good one stays in force", exc)
            return None

    def accept(self, table: RoutingTable) -> None:
        """Put a polled table in force (after its new serving versions are loaded)."""
        self.table = table
