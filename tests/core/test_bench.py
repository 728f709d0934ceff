"""`make bench` runs every benchmark script, with arguments the script accepts (issue 11.6)."""

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "benchmarks").glob("*.py"))

# Runs a script up to its argument parsing: the parsed arguments are printed, then it stops.
PARSE_ONLY = """
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def parse_and_stop(self, *args, **kwargs):
    print(vars(parse(self, *args, **kwargs)))
    sys.exit(0)
argparse.ArgumentParser.parse_args = parse_and_stop
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def bench_commands() -> dict[str, list[str]]:
    """script -> its arguments, from the commands `make -n bench` would run."""
    dry_run = subprocess.run(["make", "-n", "-W", "pyproject.toml", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert dry_run.returncode == 0, dry_run.stderr
    commands = {}
    for line in dry_run.stdout.splitlines():
        words = shlex.split(line)
        if len(words) > 1 and words[1] in SCRIPTS:
            commands[words[1]] = words[2:]
    return commands


def test_make_bench_runs_every_benchmark_script():
    assert SCRIPTS and sorted(bench_commands()) == SCRIPTS


def test_every_bench_command_line_is_accepted_by_its_script():
    for script, arguments in bench_commands().items():
        result = subprocess.run(
            [sys.executable, "-c", PARSE_ONLY, script, *arguments], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.startswith("{"), f"{script} {arguments}: {result.stderr[-500:]}"
