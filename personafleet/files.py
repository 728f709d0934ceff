"""Files other processes read while we write them (the routing table, version records, reports):
each is replaced whole in one rename, so a reader sees the old file or the new one, never a mix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> Path:
    """Write `text` beside `path`, flush it to disk, then rename it over `path` (with `mode`: a
    secret is never readable by others, not even for a moment)."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix,
                                     delete=False, encoding="utf-8") as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, mode)
    os.replace(tmp.name, path)
    return path
