"""Names and numbers every part agrees on: persona names, version numbers, generation limits.

The leaf of the core: it imports nothing of the project, so every other core module (routing,
inference, persona, store) can import it without a circle.
"""

from __future__ import annotations

import re

from personafleet.errors import PersonaError

# A persona name is a TorchServe model name, a Kubernetes label value and a path segment.
PERSONA_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"

VERSION_PATTERN = re.compile(r"^v?([1-9][0-9]*)$")

MAX_NEW_TOKENS = 512
"""The highest reply length cap anything may configure: the PersonaModel CRD's maximum of
serving.generation.maxNewTokens, and so the highest cap a packaged persona can carry."""

MAX_CONTEXT_TURNS = 50
MAX_TEXT_CHARS = 4000


def parse_version(text: str | int) -> int:
    """`3`, `"3"` or `"v3"` -> 3; anything else (`1.0`, `03`, `0`) is a user error naming the rule."""
    match = VERSION_PATTERN.fullmatch(str(text).strip())
    if isinstance(text, bool) or match is None:
        raise PersonaError(f"version {text!r} must be a positive integer such as 3 (its store folder is v3)")
    return int(match[1])
