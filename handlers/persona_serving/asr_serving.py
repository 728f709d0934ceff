"""Serving the ASR archive beside the personas: `persona serve` registers `STORE/asr/asr.mar`
(or the archive `--asr` names) as the TorchServe model `asr`, when there is one."""

from __future__ import annotations

import logging
from pathlib import Path

from persona_serving.asr import ASR_MODEL_NAME, asr_archive_path
from persona_serving.management import ManagementClient, ManagementError
from persona_serving.store import archive_version
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


async def register_asr(management_url: str, key_file: Path, links: Path, archive: Path, timeout: float) -> str:
    """Link the archive into TorchServe's flat model store as `asr.mar`, register it; its version."""
    links.mkdir(parents=True, exist_ok=True)
    link = links / f"{ASR_MODEL_NAME}.mar"
    link.unlink(missing_ok=True)
    link.symlink_to(archive)
    version = archive_version(link)
    logger.info("Registering %s v%s from %s", ASR_MODEL_NAME, version, archive)
    async with ManagementClient(management_url, token_file=key_file, timeout=timeout) as management:
        try:
            await management.register(link.name, initial_workers=None, synchronous=True)
        except ManagementError as exc:
            raise PersonaError(f"cannot load the ASR model from {archive}: {exc}") from exc
    return version
