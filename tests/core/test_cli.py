"""The one CLI: every step is a sub-command with its own --help, and user errors are one line."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_cli.main import app

STEPS = ["prepare", "init-base", "init-asr", "train", "package", "package-asr", "serve", "switch", "chat", "transcribe", "bot",
         "export-feedback", "operator"]


def test_every_step_is_listed_by_the_installed_console_script():
    persona = Path(sys.executable).with_name("persona")
    result = subprocess.run([str(persona), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for step in STEPS:
        assert f" {step} " in result.stdout, f"{step} missing from persona --help"


@pytest.mark.parametrize("step", STEPS)
def test_each_step_has_its_own_help(step):
    result = CliRunner().invoke(app, [step, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: persona {step}" in result.output


def test_a_user_error_is_one_line_with_exit_status_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "prepare", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("persona: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_path_is_one_line_too(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    export = Path(__file__).resolve().parents[2] / "examples" / "sample-export" / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "prepare", str(export), "--out", str(blocker / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("persona: error: ") and "Traceback" not in result.stderr, result.stderr
