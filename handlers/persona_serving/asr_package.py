"""`persona package-asr`: a speech-to-text checkpoint -> `asr.mar` for TorchServe.

The archive carries the ASR handler, `asr.json` (checkpoint reference, forced language, limits)
and `model-config.yaml` (batching, workers, timeout). A local checkpoint (e.g. `persona
init-asr`'s) is bundled under `model/` by default, so `STORE/asr/asr.mar` is self-contained; a hub
id (production: a Whisper checkpoint) is referenced and loaded from the node's cache.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

from persona_serving.archive import ArchiveOptions, archive_model
from persona_serving.asr import ASR_CONFIG_FILE, ASR_MODEL_DIR, ASR_MODEL_NAME, AsrConfig
from personafleet.errors import PersonaError
from personafleet.names import parse_version

logger = logging.getLogger(__name__)

HANDLER_FILE = importlib.util.find_spec("persona_serving.asr_handler").origin
# A model config and a processor's (older checkpoints keep the feature extractor's on its own).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def build_asr_archive(
    model: str, out_dir: Path, *, version: str = "1", language: str | None = "ru", bundle: bool | None = None,
    max_seconds: float = 120.0, options: ArchiveOptions | None = None,
) -> Path:
    """Write `OUT/asr.mar` (atomically, overwriting) and return its path. `bundle=None`: bundle a
    local checkpoint, reference a hub id."""
    local = Path(model).is_dir()
    bundle = local if bundle is None else bundle
    if local and not ((Path(model) / "config.json").is_file()
                      and any((Path(model) / name).is_file() for name in PROCESSOR_FILES)):
        raise PersonaError(f"{model} is not a speech-to-text checkpoint (needs config.json and a processor "
                           f"config); `persona init-asr` makes one")
    if bundle and not local:
        raise PersonaError(f"bundling needs a local checkpoint directory; {model!r} is not one")
    if language is not None and not language.isalpha():
        raise PersonaError(f"--language {language!r} is not a language code such as ru")
    version = str(parse_version(version))
    config = AsrConfig(name=ASR_MODEL_NAME, version=version, model=str(Path(model).resolve()) if local else model,
                       bundled=bundle, language=language, max_seconds=max_seconds)
    with tempfile.TemporaryDirectory(prefix="persona-package-asr-") as tmp:
        staging = Path(tmp)
        if bundle:
            shutil.copytree(model, staging / ASR_MODEL_DIR)
        (staging / ASR_CONFIG_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
        logger.info("Archiving %s v%s (%s, %s)", ASR_MODEL_NAME, version, model, "bundled" if bundle else "referenced")
        return archive_model(ASR_MODEL_NAME, version, HANDLER_FILE, staging, options or ArchiveOptions(), out_dir)
