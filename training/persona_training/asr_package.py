"""`persona package-asr`: a speech-to-text checkpoint -> `asr.mar` for TorchServe.

The archive carries the ASR handler, `asr.json` (checkpoint reference, forced language, limits)
and `model-config.yaml` (batching, workers, timeout). A local checkpoint (e.g. `persona
init-asr`'s) is bundled under `model/` by default, so `STORE/asr/asr.mar` is self-contained; a hub
id (production: a Whisper checkpoint) is referenced and loaded from the node's cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive
from pydantic import BaseModel, Field

from persona_serving.asr import ASR_CONFIG_FILE, ASR_MODEL_DIR, ASR_MODEL_NAME, AsrConfig
from personafleet.errors import PersonaError

logger = logging.getLogger(__name__)

HANDLER_FILE = importlib.util.find_spec("persona_serving.asr_handler").origin
# A model config and a processor's (older checkpoints keep the feature extractor's on its own).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class AsrArchiveOptions(BaseModel):
    batch_size: int = Field(8, ge=1, description="most requests per handler call")
    max_batch_delay_ms: int = Field(30, ge=1, description="how long TorchServe waits to fill a batch")
    workers: int = Field(1, ge=1)
    response_timeout_s: int = Field(120, ge=1)


def build_asr_archive(
    model: str, out_dir: Path, *, version: str = "1", language: str | None = "ru", bundle: bool | None = None,
    max_seconds: float = 120.0, options: AsrArchiveOptions | None = None,
) -> Path:
    """Write `OUT/asr.mar` (atomically, overwriting) and return its path. `bundle=None`: bundle a
    local checkpoint, reference a hub id."""
    options = options or AsrArchiveOptions()
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
    if not version.isdigit() or int(version) < 1:
        raise PersonaError(f"version {version!r} must be a positive integer")
    config = AsrConfig(name=ASR_MODEL_NAME, version=version, model=str(Path(model).resolve()) if local else model,
                       bundled=bundle, language=language, max_seconds=max_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    # torch-model-archiver builds in $TMPDIR/<model name> and deletes it afterwards: give it a
    # private TMPDIR so it can never remove someone's /tmp/asr.
    with tempfile.TemporaryDirectory(prefix="persona-package-asr-") as tmp:
        staging = Path(tmp) / "extra"
        staging.mkdir()
        if bundle:
            shutil.copytree(model, staging / ASR_MODEL_DIR)
        (staging / ASR_CONFIG_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
        model_config = Path(tmp) / "model-config.yaml"
        model_config.write_text(yaml.safe_dump({
            "minWorkers": options.workers, "maxWorkers": options.workers, "batchSize": options.batch_size,
            "maxBatchDelay": options.max_batch_delay_ms, "responseTimeout": options.response_timeout_s,
        }), encoding="utf-8")
        logger.info("Archiving %s v%s (%s, %s)", ASR_MODEL_NAME, version, model, "bundled" if bundle else "referenced")
        previous = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = tmp
        tempfile.tempdir = None  # re-read TMPDIR
        try:
            generate_model_archive(ModelArchiverConfig(
                model_name=ASR_MODEL_NAME, handler=HANDLER_FILE, version=version, extra_files=str(staging),
                export_path=tmp, config_file=str(model_config), force=True,
            ))
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous
            tempfile.tempdir = None
        archive = out_dir / f"{ASR_MODEL_NAME}.mar"
        shutil.move(Path(tmp) / archive.name, archive.with_suffix(".mar.partial"))
        os.replace(archive.with_suffix(".mar.partial"), archive)
    return archive
