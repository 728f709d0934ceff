"""The fleet archive: `fleet.mar`, one TorchServe model for every persona on one base (contract 3).

It carries the handler, `serving.json` (base reference, model store, LRU size, limits),
`model-config.yaml` (batching, workers, timeout) and - with `bundle_base` - the base model itself
under `base/`. No persona is inside: adapters are loaded from the model store at request time, so
the archive changes only when the handler, the base or the serving settings do. `persona serve`
builds it into its workdir at every start.

torch-model-archiver assembles an archive in `$TMPDIR/<model name>` and deletes that folder
afterwards; it runs here as a child process with a private TMPDIR, so a user's `$TMPDIR/fleet`
is never touched.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from persona_serving.config import BASE_DIR, SERVING_FILE, FleetConfig
from personafleet.errors import PersonaError
from personafleet.inference import FLEET_MODEL

# Located without importing it: the handler module pulls in torch, the builder needs none.
HANDLER_FILE = importlib.util.find_spec("persona_serving.handler").origin
ARCHIVE_VERSION = "1"


class ArchiveOptions(BaseModel):
    """TorchServe's batching settings, baked into the archive's model-config.yaml."""

    batch_size: int = Field(8, ge=1, description="most requests TorchServe hands the handler at once")
    max_batch_delay_ms: int = Field(30, ge=1, description="how long TorchServe waits to fill a batch; 0 would mean its default, 100 ms")
    workers: int = Field(1, ge=1, description="worker processes (each holds one base and its resident adapters)")
    response_timeout_s: int = Field(120, ge=1, description="seconds before TorchServe gives up on a batch")
    continuous_batching: bool = Field(False, description="TorchServe calls the handler once per decoding step; "
                                      "batch_size is then the most rows decoded together")


def _archiver() -> str:
    return str(Path(sys.executable).with_name("torch-model-archiver"))


def archive_model(name: str, version: str, handler: str, staging: Path, options: ArchiveOptions, out_dir: Path) -> Path:
    """Build `OUT/<name>.mar` from a handler and the folder of its extra files, with the batching
    settings in model-config.yaml, and put it into place in one rename; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="persona-archive-") as tmp:
        private_tmp = Path(tmp) / "tmp"
        private_tmp.mkdir()
        model_config = Path(tmp) / "model-config.yaml"
        model_config.write_text(yaml.safe_dump({
            "minWorkers": options.workers, "maxWorkers": options.workers, "batchSize": options.batch_size,
            "maxBatchDelay": options.max_batch_delay_ms, "responseTimeout": options.response_timeout_s,
            "continuousBatching": options.continuous_batching,
        }), encoding="utf-8")
        result = subprocess.run(
            [_archiver(), "--model-name", name, "--version", version, "--handler", handler,
             "--extra-files", str(staging), "--config-file", str(model_config), "--export-path", tmp, "--force"],
            env=os.environ | {"TMPDIR": str(private_tmp)}, capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise PersonaError(f"torch-model-archiver failed: {(result.stderr or result.stdout).strip()[-500:]}")
        # Into place in one step: a server may be reading the archive this one replaces.
        archive = out_dir / f"{name}.mar"
        partial = archive.with_suffix(".mar.partial")
        shutil.move(Path(tmp) / archive.name, partial)
        os.replace(partial, archive)
    return archive


def build_fleet_archive(
    out_dir: Path,
    config: FleetConfig,
    *,
    options: ArchiveOptions | None = None,
    name: str = FLEET_MODEL,
) -> Path:
    """Write `OUT/<name>.mar` (replacing it in one rename) and return its path."""
    if config.bundled_base and not Path(config.base).is_dir():
        raise PersonaError(f"--bundle-base needs a local base model directory; {config.base!r} is not one")
    with tempfile.TemporaryDirectory(prefix="persona-fleet-") as tmp:
        staging = Path(tmp)
        if config.bundled_base:
            shutil.copytree(config.base, staging / BASE_DIR)
        (staging / SERVING_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
        # The fleet serves only through step-level scheduling (the handler answers one step per call).
        options = (options or ArchiveOptions()).model_copy(update={"continuous_batching": True})
        return archive_model(name, ARCHIVE_VERSION, HANDLER_FILE, staging, options, out_dir)
