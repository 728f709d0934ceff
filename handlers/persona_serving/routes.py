"""Which requests the auth front lets through to TorchServe, decided on the RAW request path.

A check on the decoded path can be escaped: `/predictions/..%2Fapi-description` decodes to a
prediction route but reaches TorchServe's OpenAPI document once an HTTP client normalises the dot
segments, and `/./token`, `/x/../token`, `/%2e/token` slip past a `/token` prefix check. So the raw
path must not contain dot segments or percent-escapes at all, and must match one route of the
listener's allow-list exactly; the path forwarded is that raw path, unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # a TorchServe model name (persona, or the fleet model)
VERSION = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # never a dot segment: it starts with a letter or digit

# (method, path pattern): predictions and the probe only on the inference port (explanations and
# the rest would take a whole batch into paths the handler does not serve); on the management port
# reading what serves (ManagementClient's list and describe). The models are loaded at start and
# TorchServe's model API is off: registering, unregistering, scaling and switching are nobody's.
# Key renewal (`/token`) is internal to the pod.
ROUTES: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    "inference": [
        ("GET", re.compile(r"/ping")),
        ("POST", re.compile(rf"/predictions/{NAME}(/{VERSION})?")),
    ],
    "management": [
        ("GET", re.compile(r"/models")),
        ("GET", re.compile(rf"/models/{NAME}(/{VERSION})?")),
    ],
}
SERVED = {
    "inference": "GET /ping and POST /predictions/NAME[/VERSION]",
    "management": "GET /models and GET /models/NAME[/VERSION]",
}


@dataclass(frozen=True)
class Admission:
    path: str  # the raw path to forward
    refused: tuple[int, str, str] | None = None  # (status, error, detail) when refused


def admit(listener: str, method: str, raw_path: str) -> Admission:
    """Admit `method raw_path` (query string included or not) on `listener`, or say why not."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    segments = path.split("/")[1:]
    if not path.startswith("/") or "%" in path or "\\" in path or any(s in (".", "..") for s in segments):
        return Admission(path, (400, "invalid_path", "paths may not hold '.' or '..' segments or percent-escapes"))
    if not any(method == allowed and pattern.fullmatch(path) for allowed, pattern in ROUTES[listener]):
        return Admission(path, (404, "not_found", f"the {listener} API serves {SERVED[listener]}"))
    return Admission(path)
