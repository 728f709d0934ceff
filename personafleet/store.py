"""The model store's published versions (contract 1): what makes `STORE/<persona>/v<N>/` a version.

    STORE/<persona>/v<N>/adapter/       PEFT adapter_config.json + weights + tokenizer files
    STORE/<persona>/v<N>/persona.json   the PersonaSpec its prompts are built from
    STORE/<persona>/v<N>/version.json   {"persona", "version", "base"}: written LAST, atomically

`version.json` marks a complete version: a folder without it is being written (or was abandoned)
and is never served or routed to. `published_version` is the ONE rule for "a published version"
(`persona package`, `persona switch`, `persona serve` and the serving worker all apply it): the
folder resolves inside the store (no symlink leads out of it) and its `version.json` names the
persona and version of its path. Light (pydantic only): the CLI, the operator and the handler
all read it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personafleet.errors import PersonaError, first_error
from personafleet.files import write_text_atomic
from personafleet.names import PERSONA_NAME_PATTERN
from personafleet.routing import version_dir

VERSION_FILE = "version.json"
ADAPTER_DIR = "adapter"
RUN_DIR = "run"
# Written by `persona eval` into the run: per held-out prompt the person's real reply ("real") and
# the generated ones. Serving reads the real replies to warn about a reply filter that blocks them.
FIDELITY_SAMPLES_FILE = "fidelity_samples.jsonl"
VERSION_FOLDER = re.compile(r"v([1-9][0-9]*)")  # `version_dir`'s names: no leading zeros


class VersionInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    persona: str = Field(pattern=PERSONA_NAME_PATTERN)
    version: int = Field(ge=1)
    base: str = Field(description="the base model the adapter was trained on (hub id or path at training time)")


def read_version_info(folder: Path) -> VersionInfo:
    """The `version.json` of a published version; a PersonaError when it is missing or invalid."""
    path = folder / VERSION_FILE
    try:
        return VersionInfo.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise PersonaError(f"{folder} is not a published version (no {VERSION_FILE})") from None
    except OSError as exc:
        raise PersonaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        raise PersonaError(f"{path} is not a valid version record ({first_error(exc, 'version')})") from None


def write_version_info(folder: Path, info: VersionInfo) -> None:
    """Write `version.json` in one rename: a reader sees no file or the whole one."""
    write_text_atomic(folder / VERSION_FILE, info.model_dump_json(indent=2))


def check_version_path(folder: Path, persona: str, version: int) -> None:
    """A version's folder is named after it, `.../<persona>/v<N>` (what `published_version` checks
    the record against); `persona package` refuses any other `--out`."""
    if (folder.parent.name, folder.name) != (persona, f"v{version}"):
        raise PersonaError(f"{persona} v{version} is published into STORE/{persona}/v{version}, not {folder}")


def published_version(store: Path, persona: str, version: int) -> VersionInfo:
    """The record of published version `version` of `persona`; a PersonaError says why the folder
    is not one: it resolves outside the store (a symlink on the way leads out), or its own files
    do (version.json, persona.json, knowledge.json, adapter/ and what is in it), it has no valid
    `version.json`, or the record names another persona or version than its path."""
    folder = version_dir(store, persona, version)
    root = store.resolve()
    for path in (folder, *_served_files(folder)):
        if not path.resolve().is_relative_to(root):
            raise PersonaError(f"{path} leads outside the model store {root} (to {path.resolve()})")
    info = read_version_info(folder)
    if (info.persona, info.version) != (persona, version):
        raise PersonaError(f"{folder / VERSION_FILE} names {info.persona} v{info.version}, not {persona} v{version}")
    return info


def _served_files(folder: Path) -> list[Path]:
    """What a serving worker loads from a version folder (of run/ it reads only the held-out replies,
    `held_out_replies`, which checks its own path)."""
    top = [child for child in folder.iterdir() if child.name != RUN_DIR] if folder.is_dir() else []
    adapter = folder / ADAPTER_DIR
    return top + (list(adapter.iterdir()) if adapter.is_dir() and adapter.resolve().is_dir() else [])


def published_versions(store: Path) -> dict[str, list[int]]:
    """Every published version in the store (`published_version`), per persona, oldest first; other
    folders are skipped: being written, abandoned, mislabelled or leading out of the store."""
    found: dict[str, list[int]] = {}
    for record in sorted(store.glob(f"*/v*/{VERSION_FILE}")):
        persona, folder = record.parent.parent.name, record.parent.name
        if not (number := VERSION_FOLDER.fullmatch(folder)):
            continue
        version = int(number[1])
        try:
            published_version(store, persona, version)
        except PersonaError:
            continue
        found.setdefault(persona, []).append(version)
    return {persona: sorted(versions) for persona, versions in found.items()}


def held_out_replies(folder: Path) -> list[str]:
    """The person's real held-out replies a published version was judged on (`run/` of the version
    folder); [] for a version trained before `persona eval` existed, an unreadable file, or one
    that leads out of the version folder."""
    path = folder / RUN_DIR / FIDELITY_SAMPLES_FILE
    if not path.resolve().is_relative_to(folder.resolve()):
        return []
    try:
        return [json.loads(line)["real"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return []
