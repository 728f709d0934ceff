"""`persona prepare` as a user runs it: the installed entry point in a subprocess."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"
EXPORTS = Path(__file__).parent / "fixtures" / "exports"


def persona(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([PERSONA, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize(
    ("export", "says"),
    [
        ("not_json.json", "not valid JSON"),
        ("truncated.json", "JSON ends unexpectedly (truncated export?)"),
        ("not_telegram.json", "not a Telegram Desktop export"),
        ("missing.json", "no such file"),
    ],
)
def test_bad_input_is_one_line_on_stderr_exit_2_and_nothing_written(tmp_path, export, says):
    out = tmp_path / "data"
    result = persona("prepare", EXPORTS / "single_chat.json", EXPORTS / export, "--out", out)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("persona: error: ")
    assert says in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["messages", "ignored"])
def test_a_deeply_nested_export_is_one_line_on_stderr_exit_2(tmp_path, where):
    """100k levels: past Python's recursion limit in the JSON decoder (and in any validator that
    would walk it), the way a hostile or broken export arrives in a training Job."""
    deep = "[" * 100_000 + "]" * 100_000
    export = tmp_path / "deep.json"
    body = f'{{"messages": {deep}}}' if where == "messages" else f'{{"messages": [], "x": {deep}}}'
    export.write_text(body, encoding="utf-8")
    out = tmp_path / "data"
    result = persona("prepare", export, "--out", out)
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("persona: error: ")
    assert "nested too deeply" in result.stderr and str(export) in result.stderr
    assert not out.exists()


def test_options_reach_the_data_step_and_the_summary_is_printed(tmp_path):
    out = tmp_path / "data"
    result = persona(
        "prepare", EXPORTS / "single_chat.json", "--out", out, "--persona-id", "user1002", "--context-turns", "1",
        "--window-minutes", "30", "--merge-gap-seconds", "90", "--max-message-chars", "150", "--max-context-chars", "300",
        "--val-fraction", "0.2", "--seed", "7", "--scrub",
    )
    assert result.returncode == 0, result.stderr
    assert "-> 7 records" in result.stdout and "user1002 Bob" in result.stdout
    stats = (out / "stats.json").read_text(encoding="utf-8")
    for option in ('"context_turns": 1', '"window_minutes": 30.0', '"max_message_chars": 150',
                   '"merge_gap_seconds": 90.0', '"max_context_chars": 300', '"val_fraction": 0.2', '"seed": 7', '"scrub": true'):
        assert option in stats


def test_out_of_range_options_are_refused_by_the_cli(tmp_path):
    result = persona("prepare", EXPORTS / "single_chat.json", "--out", tmp_path / "data", "--val-fraction", "1.5")
    assert result.returncode == 2 and "val-fraction" in result.stderr
    assert list(tmp_path.iterdir()) == []
