"""Rendering the chart with the real Helm library (helm-python-sdk), and what the tests ask of it."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "personafleet"
CRD = CHART / "crds" / "personamodel.yaml"
RELEASE, NAMESPACE = "fleet", "chat"
BOT_TOKEN = "123456789:AAtest-token_value"
# The minimum install: everything else default (the bot cannot run without a token).
MINIMAL = {"bot": {"telegram": {"token": BOT_TOKEN}}}

Render = Callable[..., list[dict[str, Any]]]


def merge(base: dict, override: dict) -> dict:
    """`override` deep-merged over `base` (as Helm merges -f files), without touching either."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


@pytest.fixture(scope="session")
def chart():
    import helm_python

    return helm_python.Chart.load(CHART)


@pytest.fixture(scope="session")
def render_text(chart) -> Callable[..., dict[str, str]]:
    """Template file name -> rendered text, for a first install of release `fleet` in `chat`;
    `api_versions` are what the cluster serves beyond the built-ins (`helm template --api-versions`)."""

    def render(values: dict, api_versions: tuple[str, ...] = ()) -> dict[str, str]:
        if not api_versions:
            return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        # helm-python's render() does not expose them; its native call takes Helm's own option.
        from helm_python import _native

        options = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True, "api_versions": list(api_versions)}
        return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(options)))

    return render


@pytest.fixture(scope="session")
def render(render_text) -> Render:
    """The rendered Kubernetes objects for MINIMAL deep-merged with `overrides` (or `values` exactly)."""

    def objects(overrides: dict | None = None, *, values: dict | None = None,
                api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        rendered = render_text(values if values is not None else merge(MINIMAL, overrides or {}), api_versions)
        return [doc for name, text in sorted(rendered.items()) if not name.endswith("NOTES.txt")
                for doc in yaml.safe_load_all(text) if doc]

    return objects


def find(objects: list[dict], kind: str, suffix: str = "") -> dict:
    """The one object of `kind` whose name ends with `suffix`."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, f"expected one {kind} *{suffix}, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def kinds(objects: list[dict]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def workloads(objects: list[dict]) -> Iterator[dict]:
    return (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"))


def container(obj: dict, index: int = 0) -> dict:
    return pod_spec(obj)["containers"][index]


def env_of(obj: dict) -> dict[str, dict]:
    """Container env by name: the whole entry ({value} or {valueFrom})."""
    return {e["name"]: e for e in container(obj).get("env", [])}


def secret_data(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def resolve_env(objects: list[dict], workload: dict, tmp_path) -> dict[str, str]:
    """A container's environment as the process sees it: values, Secret keys, the pod's namespace;
    a mounted file path (…_FILE) points at a temp file holding the Secret key's content."""
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    env: dict[str, str] = {}
    for name, entry in env_of(workload).items():
        source = entry.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = secret_data(secrets[ref["name"]])[ref["key"]]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace"
            env[name] = NAMESPACE
        else:
            env[name] = entry["value"]
        if name.endswith("_FILE"):
            mounted = tmp_path / name
            mounted.write_text("token-from-the-secret")
            env[name] = str(mounted)
    return env
