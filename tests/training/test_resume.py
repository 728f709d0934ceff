"""Preemption: SIGTERM checkpoints and exits 143; `--resume` ends where an uninterrupted run ends."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from personafleet.errors import PersonaError
from persona_training.checkpoint import latest_checkpoint
from persona_training.config import TrainConfig
from persona_training.train import train

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"
# Enough steps that the run is still going when the test reacts to the first checkpoint; dropout
# on, so the restored RNG state matters.
SETTINGS = {"max_steps": 40, "batch_size": 32, "warmup_steps": 4, "learning_rate": 0.01, "lora_dropout": 0.1,
            "checkpoint_every": 3, "eval_every": 15, "max_source_tokens": 96, "seed": 5}


def adapter_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "adapter_model.safetensors")


def preempt(tmp_path: Path, base: Path, data: Path, run: Path) -> subprocess.CompletedProcess:
    """Start `persona train`, SIGTERM it as soon as its first checkpoint exists."""
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(SETTINGS), encoding="utf-8")
    log = tmp_path / "train.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [PERSONA, "train", "--data", str(data), "--base", str(base), "--out", str(run), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 120
            while latest_checkpoint(run) is None and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, "", log.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_base, tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    return run, train([tiny_data], str(tiny_base), run, TrainConfig(**SETTINGS))


def test_sigterm_checkpoints_and_resume_reaches_the_uninterrupted_result(
    tmp_path, tiny_base, tiny_data, uninterrupted
):
    import torch

    run = tmp_path / "run"
    result = preempt(tmp_path, tiny_base, tiny_data, run)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "SIGTERM received" in result.stderr and "(resume with --resume)" in result.stderr
    stopped = latest_checkpoint(run)
    assert stopped is not None and not (run / "report.json").exists()
    stopped_at = int(stopped.name.split("-")[1])
    assert 3 <= stopped_at < SETTINGS["max_steps"]  # lost at most the step in flight

    with pytest.raises(PersonaError, match="checkpoint belongs to a different run"):
        train([tiny_data], str(tiny_base), run, TrainConfig(**{**SETTINGS, "seed": 6}), resume=True)

    report = train([tiny_data], str(tiny_base), run, TrainConfig(**SETTINGS), resume=True)
    reference_run, reference = uninterrupted
    assert report["steps"] == reference["steps"] == SETTINGS["max_steps"]
    ours, theirs = adapter_weights(run), adapter_weights(reference_run)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=0, atol=1e-5), name
    losses = [entry["loss"] for entry in report["train_loss"]]
    assert losses == pytest.approx([entry["loss"] for entry in reference["train_loss"]], abs=1e-4)
    assert report["eval"]["after"]["loss"] == pytest.approx(reference["eval"]["after"]["loss"], abs=1e-5)
    assert report["eval"]["before"]["loss"] == pytest.approx(reference["eval"]["before"]["loss"], abs=1e-6)
    assert not (run / "checkpoints").exists()


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, tiny_base, tiny_data):
    config = TrainConfig(**{**SETTINGS, "max_steps": 2, "warmup_steps": 0})
    report = train([tiny_data], str(tiny_base), tmp_path / "run", config, resume=True)
    assert report["steps"] == 2 and len(report["train_loss"]) == 2


class _Payload:
    """What an attacker with write access to the store would plant: unpickling it opens (creates)
    a file, standing in for any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_carrying_a_pickled_object_is_refused_not_run(tmp_path, tiny_base, tiny_data):
    import torch

    run, marker = tmp_path / "run", tmp_path / "payload-ran"
    planted = run / "checkpoints" / "step-00000003" / "state.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"identity": _Payload(marker), "trainable": {}}, planted)
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps(SETTINGS), encoding="utf-8")
    result = subprocess.run(
        [PERSONA, "train", "--data", str(tiny_data), "--base", str(tiny_base), "--out", str(run),
         "--config", str(config), "--resume"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert not marker.exists()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("persona: error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "tensors and plain data only" in errors[0] and "io.open" in errors[0]
