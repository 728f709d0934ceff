"""`persona package`: a training run directory -> a versioned TorchServe `.mar`.

The archive carries the handler, the LoRA adapter (and its tokenizer), `persona.json` (the
persona's description, prompt template and generation defaults), `serving.json` (where the base
model is, merge on/off, limits) and `model-config.yaml` (batching, workers, timeout).

The base model is REFERENCED by default (hub id or mounted path, from the adapter's
`base_model_name_or_path` or `--base-path`): every persona and every version shares one base, so
a .mar stays a few MB instead of the base's GBs (FRED-T5-large is ~3.5 GB), rollouts copy and
unpack little, and the base is cached once per node. `--bundle-base` copies a local base into
the archive for a self-contained .mar (air-gapped hosts, one-off demos).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml
from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive
from pydantic import BaseModel, Field, ValidationError

from persona_serving.config import ADAPTER_DIR, BASE_DIR, SERVING_FILE, ServingConfig
from personafleet import knowledge
from personafleet.errors import PersonaError, first_error
from personafleet.inference import GenerationLimits
from personafleet.persona import PERSONA_FILE, PERSONA_NAME_PATTERN, PersonaSpec

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_config.json"
ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.*", "tokenizer*", "special_tokens_map.json",
                    "added_tokens.json", "spiece.model", "vocab*", "merges.txt")
# Located without importing it: the handler module pulls in torch, the packager needs none.
HANDLER_FILE = importlib.util.find_spec("persona_serving.handler").origin


class ArchiveOptions(BaseModel):
    """Serving settings baked into the archive's model-config.yaml and serving.json."""

    batch_size: int = Field(8, ge=1, description="most requests TorchServe hands the handler at once")
    max_batch_delay_ms: int = Field(30, ge=1, description="how long TorchServe waits to fill a batch; 0 would mean its default, 100 ms")
    workers: int = Field(1, ge=1, description="worker processes (each holds one copy of the model)")
    response_timeout_s: int = Field(120, ge=1, description="seconds before TorchServe gives up on a batch")
    max_new_tokens: int = Field(128, ge=1, description="reply length cap (seed 004)")
    merge_adapter: bool = Field(True, description="fold the LoRA weights into the base at load")


def find_adapter(run_dir: Path) -> Path:
    """The adapter directory of a run: `RUN/adapter/` or the run directory itself."""
    for candidate in (run_dir / "adapter", run_dir):
        if (candidate / ADAPTER_FILE).is_file():
            return candidate
    raise PersonaError(f"no LoRA adapter ({ADAPTER_FILE}) in {run_dir} or {run_dir / 'adapter'}")


def copy_adapter(adapter: Path, into: Path) -> None:
    """Only the adapter weights/config and the tokenizer: a run directory also holds reports,
    plots, checkpoints and possibly a merged full model, none of which belong in the archive."""
    into.mkdir(parents=True)
    for pattern in ADAPTER_PATTERNS:
        for path in adapter.glob(pattern):
            if path.is_file():
                shutil.copy2(path, into / path.name)


def resolve_base(adapter: Path, base_path: str | None) -> str:
    """The base model reference: `--base-path`, else what the adapter was trained on."""
    if base_path:
        return base_path
    try:
        recorded = json.loads((adapter / ADAPTER_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError:
        raise PersonaError(f"{adapter / ADAPTER_FILE} is not valid JSON: was {adapter} written by `persona train`?") from None
    if not recorded:
        raise PersonaError(f"{adapter / ADAPTER_FILE} names no base model; pass --base-path")
    return recorded


def load_persona(run_dir: Path, name: str) -> PersonaSpec:
    path = run_dir / PERSONA_FILE
    if not path.is_file():
        raise PersonaError(f"{path} is missing: was {run_dir} written by `persona train`?")
    try:
        persona = PersonaSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise PersonaError(f"{path} is not a valid persona spec ({first_error(exc, 'persona')})") from None
    # The TorchServe model name is the persona name: the packaged spec must agree with it.
    return persona.model_copy(update={"name": name})


def build_archive(
    run_dir: Path,
    name: str,
    version: str,
    out_dir: Path,
    *,
    base_path: str | None = None,
    bundle_base: bool = False,
    options: ArchiveOptions | None = None,
) -> Path:
    """Write `OUT/<name>.mar` (overwriting) and return its path."""
    options = options or ArchiveOptions()
    if not re.fullmatch(PERSONA_NAME_PATTERN, name):
        raise PersonaError(f"persona name {name!r} must match {PERSONA_NAME_PATTERN}")
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", version):
        raise PersonaError(f"version {version!r} must be a number such as 3 or 3.1")
    run_dir = run_dir.resolve()
    adapter = find_adapter(run_dir)
    persona = load_persona(run_dir, name)
    base = resolve_base(adapter, base_path)
    if Path(base).exists():
        base = str(Path(base).resolve())
    elif bundle_base:
        raise PersonaError(f"--bundle-base needs a local base model directory; {base!r} is not one")

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="persona-package-") as tmp:
        staging = Path(tmp) / "extra"
        copy_adapter(adapter, staging / ADAPTER_DIR)
        if bundle_base:
            shutil.copytree(base, staging / BASE_DIR)
        (staging / PERSONA_FILE).write_text(persona.model_dump_json(indent=2), encoding="utf-8")
        if knowledge.copy(run_dir, staging):  # the handler reads it beside persona.json
            knowledge.copy(run_dir, out_dir)  # contract 1: STORE/NAME/vN/knowledge.json
        serving = ServingConfig(
            name=name,
            version=version,
            base=base,
            bundled_base=bundle_base,
            merge_adapter=options.merge_adapter,
            limits=GenerationLimits(max_new_tokens=options.max_new_tokens),
        )
        (staging / SERVING_FILE).write_text(serving.model_dump_json(indent=2), encoding="utf-8")
        model_config = Path(tmp) / "model-config.yaml"
        model_config.write_text(
            yaml.safe_dump(
                {
                    "minWorkers": options.workers,
                    "maxWorkers": options.workers,
                    "batchSize": options.batch_size,
                    "maxBatchDelay": options.max_batch_delay_ms,
                    "responseTimeout": options.response_timeout_s,
                }
            ),
            encoding="utf-8",
        )
        logger.info("Archiving %s v%s (base %s, %s)", name, version, base, "bundled" if bundle_base else "referenced")
        generate_model_archive(
            ModelArchiverConfig(
                model_name=name,
                handler=HANDLER_FILE,
                version=version,
                extra_files=str(staging),
                export_path=tmp,
                config_file=str(model_config),
                force=True,
            )
        )
        # Into place in one step: a server may be reading the archive this one replaces.
        archive = out_dir / f"{name}.mar"
        shutil.move(Path(tmp) / archive.name, archive.with_suffix(".mar.partial"))
        os.replace(archive.with_suffix(".mar.partial"), archive)
    return archive
