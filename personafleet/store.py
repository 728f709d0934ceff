"""The model store's published versions (contract 1): what makes `STORE/<persona>/v<N>/` a version.

    STORE/<persona>/v<N>/adapter/       PEFT adapter_config.json + weights + tokenizer files
    STORE/<persona>/v<N>/persona.json   the PersonaSpec its prompts are built from
    STORE/<persona>/v<N>/version.json   {"persona", "version", "base"}: written LAST, atomically

`version.json` marks a complete version: a folder without it is being written (or was abandoned)
and is never served or routed to. Light (pydantic only): the CLI, the operator and the handler
all read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personafleet.errors import PersonaError, first_error
from personafleet.files import write_text_atomic
from personafleet.names import PERSONA_NAME_PATTERN

VERSION_FILE = "version.json"
ADAPTER_DIR = "adapter"
RUN_DIR = "run"
# Written by `persona eval` into the run: per held-out prompt the person's real reply ("real") and
# the generated ones. Serving reads the real replies to warn about a reply filter that blocks them.
FIDELITY_SAMPLES_FILE = "fidelity_samples.jsonl"


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


def published_versions(store: Path) -> dict[str, list[int]]:
    """Every complete version in the store, per persona, oldest first (folders without a valid
    `version.json` are skipped: they are being written or were abandoned)."""
    found: dict[str, list[int]] = {}
    for record in sorted(store.glob(f"*/v*/{VERSION_FILE}")):
        try:
            info = read_version_info(record.parent)
        except PersonaError:
            continue
        if record.parent.name == f"v{info.version}" and record.parent.parent.name == info.persona:
            found.setdefault(info.persona, []).append(info.version)
    return {persona: sorted(versions) for persona, versions in found.items()}


def held_out_replies(folder: Path) -> list[str]:
    """The person's real held-out replies a published version was judged on (`run/` of the version
    folder); [] for a version trained before `persona eval` existed, or an unreadable file."""
    path = folder / RUN_DIR / FIDELITY_SAMPLES_FILE
    try:
        return [json.loads(line)["real"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return []
