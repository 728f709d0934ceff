"""Staging: making a .mar of the model store registrable by TorchServe 0.12.

TorchServe reduces a relative registration url to its file name and looks for it at the top of
its `model_store` (`devops-dude/v2/devops-dude.mar` -> `STORE/devops-dude.mar`), so the nested
store of contract 1 cannot be registered as is, and two versions share one file name. TorchServe
therefore gets its own flat directory of symlinks, one per version, named `<persona>.v<N>.mar`.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path, PurePosixPath

from personafleet.errors import PersonaError

NESTED_URL = re.compile(r"(?P<name>[a-z0-9-]+)/v(?P<version>[0-9]+)/(?P=name)\.mar")
SOURCE_RULE = (
    "only the model store is a model source: a relative path inside it such as <persona>/v<N>/<persona>.mar "
    "(no scheme, no leading '/', no '..')"
)


def link_name(url: str) -> str:
    """`<persona>/v<N>/<persona>.mar` -> `<persona>.v<N>.mar`; a flat `<name>.mar` stays as is."""
    if match := NESTED_URL.fullmatch(url):
        return f"{match['name']}.v{match['version']}.mar"
    path = PurePosixPath(url)
    if len(path.parts) == 1 and path.suffix == ".mar":
        return url
    raise PersonaError(f"model url {url!r} is neither <persona>/v<N>/<persona>.mar nor <name>.mar")


def store_archive(store: Path, url: str) -> Path:
    """The archive `url` names inside `store`; any other source (a scheme such as http:// or
    file://, an absolute path, `..`, a link out of the store) is refused."""
    if not url or ":" in url or "\\" in url or url.startswith("/") or ".." in PurePosixPath(url).parts:
        raise PersonaError(f"model url {url!r} refused: {SOURCE_RULE}")
    target = (store / url).resolve()
    if not target.is_relative_to(store.resolve()):
        raise PersonaError(f"model url {url!r} refused: {SOURCE_RULE}")
    return target


def stage(store: Path, url: str, links: Path) -> str:
    """Link `store/url` into `links/` under its unique name; return the name to register."""
    target = store_archive(store, url)
    if not target.is_file():
        raise PersonaError(f"no model archive at {store / url}")
    name = link_name(url)
    links.mkdir(parents=True, exist_ok=True)
    link = links / name
    if link.is_symlink() or link.exists():
        if link.resolve() == target:
            return name
        link.unlink()
    link.symlink_to(target)
    return name


def archive_version(path: Path) -> str:
    """The model version written into a .mar's manifest by `persona package --version`."""
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PersonaError(f"{path} is not a model archive: {exc}") from exc
