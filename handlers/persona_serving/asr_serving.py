"""Serving the ASR archive beside the personas: `persona serve` loads `STORE/asr/asr.mar` (or the
archive `--asr` names) at start as the TorchServe model `asr`, when there is one."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from persona_serving.asr import ASR_MODEL_NAME, asr_archive_path
from personafleet.errors import PersonaError

logger = logging.getLogger(__name__)


def find_asr(model_store: Path, asr: Path | None) -> Path | None:
    """The ASR archive to serve: `asr` if given (it must exist), else the store's, else none."""
    if asr is not None:
        if not asr.is_file():
            raise PersonaError(f"--asr {asr}: no such model archive")
        return asr.resolve()
    found = asr_archive_path(model_store)
    return found.resolve() if found.is_file() else None


def link_asr(links: Path, archive: Path) -> None:
    """Link the archive into TorchServe's flat model store as `asr.mar` (TorchServe loads it at
    start); a file that is no model archive is refused first."""
    version = archive_version(archive)
    links.mkdir(parents=True, exist_ok=True)
    link = links / f"{ASR_MODEL_NAME}.mar"
    link.unlink(missing_ok=True)
    link.symlink_to(archive)
    logger.info("Serving %s v%s from %s", ASR_MODEL_NAME, version, archive)


def archive_version(path: Path) -> str:
    """The model version written into a .mar's manifest by `persona package-asr --version`."""
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PersonaError(f"{path} is not a model archive: {exc}") from exc
