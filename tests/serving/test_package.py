"""`persona package` publishes a version folder (contract 1); `fleet.mar` holds no persona."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from persona_serving.archive import ArchiveOptions, build_fleet_archive
from persona_serving.config import FleetConfig
from persona_training.package import publish_version
from personafleet.errors import PersonaError
from personafleet.lora import MAX_LORA_RANK
from personafleet.persona import PersonaSpec
from personafleet.store import published_versions, read_version_info
from tests.fixtures.lora_adapters import make_adapter


def persona_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona_cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_a_published_version_holds_adapter_persona_run_and_version_record(tiny_run: Path, tiny_base: Path, tmp_path: Path):
    out = publish_version(tiny_run, "pm-life", "v3", tmp_path / "store" / "pm-life" / "v3")
    assert read_version_info(out).model_dump() == {"persona": "pm-life", "version": 3, "base": str(tiny_base)}
    assert PersonaSpec.model_validate_json((out / "persona.json").read_text()).name == "pm-life"
    assert {"adapter_config.json", "tokenizer_config.json"} <= {p.name for p in (out / "adapter").iterdir()}
    assert not any(p.suffix == ".png" or p.name == "report.json" for p in (out / "adapter").iterdir())
    assert (out / "run" / "report.json").is_file() and not (out / "run" / "merged").exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "persona.json", "run", "version.json"]
    assert published_versions(tmp_path / "store") == {"pm-life": [3]}


def test_a_run_trained_inside_the_version_folder_is_published_in_place(tiny_run: Path, tmp_path: Path):
    """The operator's training Job trains into STORE/NAME/vN/run and publishes that folder."""
    out = tmp_path / "devops-dude" / "v1"
    shutil.copytree(tiny_run, out / "run")
    publish_version(out / "run", "devops-dude", 1, out)
    assert read_version_info(out).version == 1 and (out / "run" / "report.json").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_another_version_is_never_replaced_silently_but_the_same_one_is(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "devops-dude" / "v1"
    publish_version(tiny_run, "devops-dude", 1, out)
    info = read_version_info(out)
    (out / "version.json").write_text(info.model_copy(update={"version": 3}).model_dump_json())  # mislabelled by hand
    with pytest.raises(PersonaError, match="holds version 3, not 1; pass --force"):
        publish_version(tiny_run, "devops-dude", 1, out)
    publish_version(tiny_run, "devops-dude", 1, out, force=True)
    assert read_version_info(out).version == 1
    publish_version(tiny_run, "devops-dude", 1, out)  # republishing the same version is fine
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging folders left behind"


@pytest.mark.parametrize(("name", "version", "out"), [
    ("devops-dude", 3, "devops-dude/v5"),  # a v5 folder would hold version 3
    ("devops-dude", 1, "pm-life/v1"),  # pm-life's folder would hold devops-dude
    ("devops-dude", 1, "devops-dude/latest"),
])
def test_a_version_is_published_only_into_its_own_folder(tiny_run: Path, tmp_path: Path, name, version, out):
    with pytest.raises(PersonaError, match=f"STORE/{name}/v{version}"):
        publish_version(tiny_run, name, version, tmp_path / out)
    assert not (tmp_path / out).exists()


def test_cli_refuses_bad_versions_and_runs_with_one_line(tiny_run: Path, tmp_path: Path):
    result = persona_cli("package", "--run", str(tiny_run), "--name", "devops-dude", "--version", "1.0",
                         "--out", str(tmp_path / "devops-dude" / "v1"))
    assert result.returncode == 2 and result.stderr.startswith("persona: error: version '1.0' must be a positive integer")
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    out = tmp_path / "devops-dude" / "v1"
    result = persona_cli("package", "--run", str(not_a_run), "--name", "devops-dude", "--version", "1", "--out", str(out))
    assert result.returncode == 2 and result.stderr.startswith("persona: error: no LoRA adapter")
    assert "Traceback" not in result.stderr and not out.exists()


def test_the_fleet_archive_carries_handler_settings_and_batching_but_no_persona(tiny_base: Path, tmp_path: Path):
    config = FleetConfig(base=str(tiny_base), model_store="/store", max_resident_adapters=7)
    mar = build_fleet_archive(tmp_path, config, options=ArchiveOptions(batch_size=4, max_batch_delay_ms=20))
    assert mar == tmp_path / "fleet.mar"
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        serving = FleetConfig.model_validate_json(archive.read("serving.json"))
        model_config = yaml.safe_load(archive.read("model-config.yaml"))
    assert manifest["model"]["handler"] == "handler.py" and manifest["model"]["modelName"] == "fleet"
    assert serving == config
    assert model_config == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 20, "responseTimeout": 120,
                            "continuousBatching": True}  # the fleet serves one decoding step per call
    assert not any(n.startswith(("adapter/", "base/")) or n == "persona.json" for n in names)


def test_the_archiver_never_touches_the_users_tmpdir_folder_of_that_name(tiny_base: Path, tmp_path: Path, monkeypatch):
    """torch-model-archiver deletes $TMPDIR/<model name>; it runs with a private TMPDIR."""
    user_tmp = tmp_path / "user-tmp"
    (user_tmp / "fleet").mkdir(parents=True)
    (user_tmp / "fleet" / "notes.txt").write_text("mine")
    monkeypatch.setenv("TMPDIR", str(user_tmp))
    build_fleet_archive(tmp_path / "out", FleetConfig(base=str(tiny_base)), options=ArchiveOptions())
    assert (user_tmp / "fleet" / "notes.txt").read_text() == "mine"


def test_a_bundled_base_travels_inside(tiny_base: Path, tmp_path: Path):
    mar = build_fleet_archive(tmp_path, FleetConfig(base=str(tiny_base), bundled_base=True))
    with zipfile.ZipFile(mar) as archive:
        assert "base/config.json" in archive.namelist()
    with pytest.raises(PersonaError, match="needs a local base model directory"):
        build_fleet_archive(tmp_path, FleetConfig(base="ai-forever/FRED-T5-large", bundled_base=True))


def test_a_zero_batch_delay_is_refused_because_torchserve_reads_it_as_100_ms():
    """Measured: with maxBatchDelay 0, TorchServe 0.12 queued every lone request ~100 ms."""
    with pytest.raises(ValidationError, match="max_batch_delay_ms"):
        ArchiveOptions(max_batch_delay_ms=0)


@pytest.mark.parametrize(("settings", "reason"), [
    ({"targets": ["q", "v"], "use_dora": True}, "DoRA"),
    ({"targets": ["q", "v"], "bias": "all"}, "trains biases"),
    ({"targets": ["shared"]}, "LoRA on an embedding"),
    ({"targets": ["q"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
], ids=["dora", "bias", "embedding", "modules-to-save"])
def test_package_refuses_an_adapter_the_fleets_slots_cannot_serve(tiny_base: Path, tmp_path: Path, settings: dict,
                                                                  reason: str):
    run = make_adapter(tiny_base, tmp_path / "run", 1, 8, 16, **settings)
    with pytest.raises(PersonaError, match=reason):
        publish_version(run, "odd", 1, tmp_path / "store" / "odd" / "v1")
    assert not (tmp_path / "store" / "odd" / "v1" / "version.json").exists()


def test_package_refuses_a_rank_above_the_fleets_and_modules_the_base_lacks_with_one_line(
        tiny_base: Path, fred_base: Path, tmp_path: Path):
    wide = make_adapter(tiny_base, tmp_path / "wide", 1, MAX_LORA_RANK + 1, 16, ["q"])
    result = persona_cli("package", "--run", str(wide), "--name", "wide", "--version", "1",
                         "--out", str(tmp_path / "store" / "wide" / "v1"))
    assert result.returncode == 2 and "its rank 65 is above the fleet's maxLoraRank 64" in result.stderr
    elsewhere = make_adapter(fred_base, tmp_path / "elsewhere", 1, 8, 16, ["FF"])  # wi_0 / wi_1: FRED's layers
    result = persona_cli("package", "--run", str(elsewhere), "--name", "elsewhere", "--version", "1",
                         "--out", str(tmp_path / "store" / "elsewhere" / "v1"), "--base-path", str(tiny_base))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"does not fit base {tiny_base}" in result.stderr and "the base has no such layer" in result.stderr
    publish_version(elsewhere, "elsewhere", 1, tmp_path / "store" / "elsewhere" / "v1")  # fits its own base
