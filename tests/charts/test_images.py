"""The Dockerfiles (no Docker engine here, so they are parsed): pinned bases, a non-root user,
no secrets, entrypoints the `persona` CLI really has; and the kind e2e script is valid bash."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

from tests.charts.conftest import ROOT
from tests.charts.test_render import parse_cli

DOCKERFILES = ["Dockerfile.serve", "Dockerfile.bot"]
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL", re.IGNORECASE)


@dataclass
class Dockerfile:
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults
    bases: list[str] = field(default_factory=list)  # FROM images, ARGs resolved
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [value for name, value in self.instructions if name == keyword]
        return values[-1] if values else None


def parse(name: str) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped; ARG defaults resolved in FROM."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    parsed = Dockerfile()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        parsed.instructions.append((keyword, value))
        if keyword == "ARG" and "=" in value:
            arg, _, default = value.partition("=")
            parsed.args[arg] = default
        elif keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: parsed.args[m.group(1) or m.group(2)], value.split()[0])
            parsed.bases.append(image)
    return parsed


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request) -> Dockerfile:
    return parse(request.param)


def test_base_images_are_pinned(dockerfile):
    for image in dockerfile.bases:
        repository, _, tag = image.rpartition(":")
        pinned_digest = "@sha256:" in image
        assert pinned_digest or (repository and "/" not in tag and tag not in ("latest", "")), image
    assert dockerfile.args.get("TORCH_VERSION") == "2.13.0"  # the project's pin


def test_the_cuda_base_is_a_build_argument():
    serve = parse("Dockerfile.serve")
    assert serve.instructions[0] == ("ARG", f"BASE_IMAGE={serve.args['BASE_IMAGE']}")
    assert serve.args["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert serve.last("FROM") == "${BASE_IMAGE}"


def test_the_images_run_as_a_non_root_user(dockerfile):
    user = dockerfile.last("USER")
    assert user is not None
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: kubelet can verify runAsNonRoot
    assert uid == "1000"  # the chart's podSecurityContext and the operator's Job run as 1000


def test_no_secret_is_baked_into_an_image(dockerfile):
    for keyword, value in dockerfile.instructions:
        if keyword in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"(\w+)=", value) or [value.split()[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{keyword} {value}"
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|key_file|\.pem|id_rsa|kubeconfig", value), value


def test_the_entrypoint_and_command_exist_in_the_cli(dockerfile):
    entrypoint = json.loads(dockerfile.last("ENTRYPOINT"))
    command = json.loads(dockerfile.last("CMD"))
    assert entrypoint == ["persona"]
    parse_cli(command)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_copies_every_package_the_project_installs(name):
    """pyproject's packages.find folders must all be in the build context and copied."""
    import tomllib

    where = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["where"]
    copied = {value.split()[0] for keyword, value in parse(name).instructions if keyword == "COPY"}
    folders = {w for w in where if w != "."} | {"personafleet"}
    assert folders <= copied
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert all(f"!{folder}/" in ignore for folder in folders)


def test_the_e2e_script_is_valid_bash_and_uses_the_example():
    script = ROOT / "scripts" / "e2e-kind.sh"
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    for step in ("kind create cluster", "kind load docker-image", "helm install", "examples/persona.yaml",
                 "jsonpath='{.status.phase}'", "/predictions/"):
        assert step in text, step
    # Every value the script sets exists (the schema would refuse a typo only at install time).
    for key in re.findall(r"--set(?:-json)? '?([\w.]+)=", text):
        assert_value_exists(key)


def assert_value_exists(dotted: str) -> None:
    import yaml

    node = yaml.safe_load((ROOT / "charts" / "personafleet" / "values.yaml").read_text())
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"--set {dotted}: no such value"
        node = node[part]


def test_the_e2e_persona_commands_parse_with_the_cli():
    """Every `persona` command the e2e script runs in the cluster parses with the CLI."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "scripts" / "e2e-kind.sh").read_text())
    runs = [shlex.split(line.split("-- persona", 1)[1]) for line in text.splitlines() if "-- persona " in line]
    assert runs
    for args in runs:
        parse_cli(args)
