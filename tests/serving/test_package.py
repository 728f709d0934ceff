"""`persona package`: what goes into a .mar."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from persona_training.package import ArchiveOptions, build_archive
from personafleet.persona import PersonaSpec


def test_archive_references_the_base_and_carries_persona_and_batching(tiny_run: Path, tiny_base: Path, tmp_path: Path):
    mar = build_archive(tiny_run, "devops-dude", "3", tmp_path, options=ArchiveOptions(batch_size=4, max_batch_delay_ms=20))
    assert mar == tmp_path / "devops-dude.mar"
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        serving = json.loads(archive.read("serving.json"))
        persona = PersonaSpec.model_validate_json(archive.read("persona.json"))
        model_config = yaml.safe_load(archive.read("model-config.yaml"))
    assert manifest["model"]["modelVersion"] == "3"
    assert manifest["model"]["handler"] == "handler.py"
    assert serving["bundled_base"] is False and Path(serving["base"]) == tiny_base.resolve()
    assert serving["limits"]["max_new_tokens"] == 128
    assert persona.name == "devops-dude" and persona.generation.max_new_tokens is not None
    assert model_config == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 20, "responseTimeout": 120}
    assert {"adapter/adapter_config.json", "adapter/tokenizer_config.json"} <= names
    # The run's reports, plots and merged full model stay out of the archive.
    assert not any(n.startswith(("merged/", "base/")) or n.endswith((".png", "report.json")) for n in names)


def test_bundled_base_travels_inside(tiny_run: Path, tmp_path: Path):
    mar = build_archive(tiny_run, "devops-dude", "1", tmp_path, bundle_base=True)
    with zipfile.ZipFile(mar) as archive:
        assert "base/config.json" in archive.namelist()
        assert json.loads(archive.read("serving.json"))["bundled_base"] is True


def test_cli_refuses_bad_input_with_one_line(tmp_path: Path):
    run = tmp_path / "not-a-run"
    run.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "personafleet.cli", "package", "--run", str(run), "--name", "devops-dude",
         "--version", "1", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("persona: error: no LoRA adapter")
    assert "Traceback" not in result.stderr


def test_a_zero_batch_delay_is_refused_because_torchserve_reads_it_as_100_ms():
    """Measured: with maxBatchDelay 0, TorchServe 0.12 queued every lone request ~100 ms."""
    with pytest.raises(ValidationError, match="max_batch_delay_ms"):
        ArchiveOptions(max_batch_delay_ms=0)
