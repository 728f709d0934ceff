"""`persona train --config`: typed, validated, and in step with what the operator writes."""

import subprocess
from pathlib import Path

import pytest

from personafleet.errors import PersonaError
from persona_operator.spec import TrainingSection
from persona_training.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_config_means_the_defaults():
    config = load_config(None)
    assert config == TrainConfig()
    assert config.target_modules is None and config.precision == "auto" and config.max_steps is None
    assert config.persona.name == "devops-dude"


def test_yaml_values_and_the_persona_are_read(tmp_path):
    config = load_config(write(tmp_path, """
persona:
  name: alice
  description: Отвечаю вежливо.
  template: {max_context_turns: 4}
lora_rank: 4
target_modules: [q, k, v, o]
learning_rate: 0.0003
schedule: linear
max_steps: 100
gradient_accumulation: 4
precision: fp32
"""))
    assert config.persona.name == "alice" and config.persona.template.max_context_turns == 4
    assert config.lora_rank == 4 and config.target_modules == ["q", "k", "v", "o"]
    assert config.learning_rate == 3e-4 and config.schedule == "linear" and config.max_steps == 100
    assert config.samples_per_step == config.batch_size * 4


def test_the_operators_job_config_is_accepted(tmp_path):
    """The operator writes the CR's training section as JSON (valid YAML) with these keys."""
    assert set(TrainingSection.model_fields) <= set(TrainConfig.model_fields)
    config = load_config(write(tmp_path, '{"lora_rank": 16, "max_steps": 20, "precision": "auto", "epochs": 2.5}'))
    assert config.lora_rank == 16 and config.max_steps == 20 and config.epochs == 2.5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("lora_rnak: 8\n", "lora_rnak: Extra inputs are not permitted"),
        ("lora_rank: 0\n", "lora_rank: Input should be greater than or equal to 1"),
        ("lora_rank: 128\n", "lora_rank: Input should be less than or equal to 64"),  # the fleet's widest slot
        ("use_dora: true\n", "use_dora: Extra inputs are not permitted"),  # nothing a slot cannot serve is trainable
        ("precision: int4\n", "precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
        ("schedule: exponential\n", "schedule: Input should be"),
        ("persona: {name: Not A Name}\n", "persona.name: String should match pattern"),
        ("- lora_rank\n", "a training config is a mapping of settings, got list"),
        ("lora_rank: [1\n", "not valid YAML at line"),
        ("knowledge: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, text, says):
    with pytest.raises(PersonaError) as error:
        load_config(write(tmp_path, text))
    assert says in str(error.value) and "\n" not in str(error.value)
    assert str(tmp_path / "train.yaml") in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(PersonaError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_the_cli_prints_the_config_error_as_one_line_and_exits_2(tmp_path):
    config = write(tmp_path, "batch_size: -1\n")
    result = subprocess.run(
        [PERSONA, "train", "--data", str(tmp_path), "--base", str(tmp_path), "--out", str(tmp_path / "run"),
         "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("persona: error: ") and result.stderr.count("\n") == 1
    assert "batch_size: Input should be greater than or equal to 1" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_short_run_keeps_a_warm_up_cut_to_half_of_it(tmp_path, caplog):
    """docs/training.md: warm-up longer than the run is cut to half the run (logged), not refused."""
    from persona_training.train import warmup_for

    config = load_config(write(tmp_path, "max_steps: 10\nwarmup_steps: 50\n"))
    assert (config.max_steps, config.warmup_steps) == (10, 50)
    with caplog.at_level("INFO", logger="persona_training.train"):
        assert warmup_for(config.warmup_steps, 10) == 5
    assert "warmup_steps 50 cut to 5: the run has only 10 steps" in caplog.text
    assert warmup_for(20, 100) == 20 and warmup_for(20, 1) == 0
