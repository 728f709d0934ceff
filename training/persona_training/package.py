"""`persona package`: a training run -> a published version in the model store (contract 1).

    STORE/<persona>/v<N>/adapter/       the LoRA adapter and its tokenizer (nothing else of the run)
    STORE/<persona>/v<N>/persona.json   the persona's description, template and generation defaults
    STORE/<persona>/v<N>/run/           the training run (report, checkpoints; not a merged model)
    STORE/<persona>/v<N>/version.json   {"persona", "version", "base"}, written last

The folder is assembled beside its destination and renamed into place with `version.json`
already inside, so a worker never loads half a version. The base model stays outside: every
persona on a base shares one copy, loaded once per serving worker (see docs/serving.md).
Republishing the same version replaces it; a folder holding another version is kept unless
`force` (it may be rollback material).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

from pydantic import ValidationError

from personafleet import knowledge
from personafleet.errors import PersonaError, first_error
from personafleet.lora import ADAPTER_WEIGHTS, check_config, check_targets, target_modules
from personafleet.names import PERSONA_NAME_PATTERN, parse_version
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.store import (
    ADAPTER_DIR, RUN_DIR, VERSION_FILE, VersionInfo, check_version_path, read_version_info, write_version_info,
)

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_config.json"
ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.*", "tokenizer*", "special_tokens_map.json",
                    "added_tokens.json", "spiece.model", "vocab*", "merges.txt")
# A merged full model is a base-sized copy: the fleet never loads it, so it stays out of the store.
RUN_EXCLUDES = ("merged",)


def find_adapter(run_dir: Path) -> Path:
    """The adapter directory of a run: `RUN/adapter/` or the run directory itself."""
    for candidate in (run_dir / "adapter", run_dir):
        if (candidate / ADAPTER_FILE).is_file():
            return candidate
    raise PersonaError(f"no LoRA adapter ({ADAPTER_FILE}) in {run_dir} or {run_dir / 'adapter'}")


def copy_adapter(adapter: Path, into: Path) -> None:
    """Only the adapter weights/config and the tokenizer."""
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


def check_servable(adapter: Path, base: str) -> None:
    """Refuse an adapter the fleet's slots cannot serve (personafleet.lora): its config, its
    weight names, and its target modules against the base's layers (read without weights; when
    the base cannot be read here, the worker still checks at load)."""
    from safetensors import SafetensorError, safe_open

    from persona_training.modeling import base_skeleton

    try:
        check_config(json.loads((adapter / ADAPTER_FILE).read_text(encoding="utf-8")), str(adapter))
    except ValueError:
        raise PersonaError(f"{adapter / ADAPTER_FILE} is not valid JSON: was {adapter} written by `persona train`?") from None
    weights = adapter / ADAPTER_WEIGHTS
    try:
        with safe_open(weights, framework="pt") as tensors:
            modules = target_modules(tensors.keys())
    except (OSError, SafetensorError) as exc:
        raise PersonaError(f"{weights} is unreadable ({exc.__class__.__name__}): the fleet reads LoRA weights from safetensors") from None
    skeleton = base_skeleton(base)
    if skeleton is None:
        logger.warning("Cannot read base %s here: the serving worker checks the target modules when it loads", base)
        return
    try:
        check_targets(skeleton, modules)
    except PersonaError as exc:
        raise PersonaError(f"{adapter} does not fit base {base}: {exc}") from None


def load_persona(run_dir: Path, name: str) -> PersonaSpec:
    path = run_dir / PERSONA_FILE
    if not path.is_file():
        raise PersonaError(f"{path} is missing: was {run_dir} written by `persona train`?")
    try:
        persona = PersonaSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise PersonaError(f"{path} is not a valid persona spec ({first_error(exc, 'persona')})") from None
    # Requests name the persona: the published spec must agree with the name it is served under.
    return persona.model_copy(update={"name": name})


def _check_replace(out: Path, version: int, force: bool) -> None:
    """Refuse to overwrite a folder that holds another published version, unless forced."""
    if not (out / VERSION_FILE).exists() or force:
        return
    try:
        held = read_version_info(out).version
    except PersonaError:
        return  # an unreadable record marks no usable version
    if held != version:
        raise PersonaError(f"{out} holds version {held}, not {version}; pass --force to replace it")


def _replace_dir(build: Path, into: Path) -> None:
    """Swap a finished folder in for `into` (kept as is until the new one is complete)."""
    if into.exists():
        old = into.with_name(f".{into.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        into.rename(old)
        build.rename(into)
        shutil.rmtree(old, ignore_errors=True)
    else:
        build.rename(into)


def publish_version(
    run_dir: Path, name: str, version: str | int, out: Path, *, base_path: str | None = None, force: bool = False,
) -> Path:
    """Publish `run_dir` as version `version` of persona `name` into the folder `out`; returns `out`.

    The run may already be `out/run` (the training Job trains there) or live anywhere else (it is
    then copied in). `version.json` is removed first and written last, so a worker never loads a
    version whose adapter and persona do not belong together.
    """
    if not re.fullmatch(PERSONA_NAME_PATTERN, name):
        raise PersonaError(f"persona name {name!r} must match {PERSONA_NAME_PATTERN}")
    number = parse_version(version)
    check_version_path(out, name, number)
    run_dir, out = run_dir.resolve(), out.resolve()
    if out == run_dir or (out in run_dir.parents and run_dir != out / RUN_DIR):
        raise PersonaError(f"--out {out} may not contain the run {run_dir} except as {out / RUN_DIR}")
    adapter = find_adapter(run_dir)
    persona = load_persona(run_dir, name)
    base = resolve_base(adapter, base_path)
    check_servable(adapter, base)
    _check_replace(out, number, force)

    out.mkdir(parents=True, exist_ok=True)
    (out / VERSION_FILE).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as tmp:
        staging = Path(tmp)
        copy_adapter(adapter, staging / ADAPTER_DIR)
        (staging / PERSONA_FILE).write_text(persona.model_dump_json(indent=2), encoding="utf-8")
        if run_dir != out / RUN_DIR:
            shutil.copytree(run_dir, staging / RUN_DIR, ignore=shutil.ignore_patterns(*RUN_EXCLUDES))
            _replace_dir(staging / RUN_DIR, out / RUN_DIR)
        _replace_dir(staging / ADAPTER_DIR, out / ADAPTER_DIR)
        (staging / PERSONA_FILE).replace(out / PERSONA_FILE)
        if not knowledge.copy(run_dir, out):  # contract 1: STORE/NAME/vN/knowledge.json, when the run has facts
            (out / knowledge.KNOWLEDGE_FILE).unlink(missing_ok=True)  # a republished version keeps no stale facts
    write_version_info(out, VersionInfo(persona=name, version=number, base=base))
    logger.info("Published %s v%d into %s (base %s)", name, number, out, base)
    return out
