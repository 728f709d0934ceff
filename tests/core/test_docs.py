"""Docs that cannot drift: every `persona ...` command line in a code block of README.md and docs/*.md
parses with the real CLI (typer's click commands; nothing is run). An unknown command, an unknown
flag or an argument no command takes fails the test with the file and line to fix."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.core
import typer.main

from persona_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATORS = re.compile(r"^[|&;()<>]+$")  # shell control and redirection tokens end a command
PIPELINE = re.compile(r"^(\|\|?|&&?|;|\()$")  # ...and these start the next one
DIAGRAM = re.compile(r"[\u2500-\u257f\u2190-\u21ff\u25b2-\u25c0]")  # box drawing and arrows: a figure, not a command
ELLIPSES = ("...", "…")  # "and the rest", in a doc's example
WRAPPERS = ("$", "--", "nice", "exec", "time", "env", "sudo")  # what may stand before a command


def code_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of every line in a fenced or indented code block; lines
    continued with a backslash are joined."""
    fenced, previous_blank, indented = False, True, False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        indented = line.startswith("    ") and (previous_blank or indented) and not line.lstrip().startswith(("-", "*", "|"))
        previous_blank = not line.strip()
        if not (fenced or indented):
            continue
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", 0


def persona_commands(line: str) -> Iterator[list[str]]:
    """The arguments of each `persona` (or `python -m persona_cli`) invocation on a shell line."""
    if DIAGRAM.search(line):
        return
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    for index, token in enumerate(tokens):
        if token == "persona_cli" and tokens[index - 1] == "-m" or (
                (token == "persona" or token.endswith("/persona")) and _command_position(tokens[:index])):
            argv = []
            for word in tokens[index + 1:]:
                if SEPARATORS.match(word):
                    break
                word = word.strip("[]")  # [--optional FLAG]
                if word and word not in ELLIPSES:
                    argv.append(word)
            yield argv


def _command_position(before: list[str]) -> bool:
    """A word is a command when it starts the line or a pipeline stage, after environment
    assignments, a prompt or a wrapper (`flock LOCK`, `timeout N` included)."""
    words = list(before)
    while words:
        if "=" in words[-1] or words[-1] in WRAPPERS:
            words.pop()
        elif len(words) >= 2 and words[-2] in ("flock", "timeout"):
            del words[-2:]
        else:
            break
    return not words or bool(PIPELINE.match(words[-1]))


def parse_error(argv: list[str]) -> str | None:
    """Why `persona ARGV` would not parse (unknown command, unknown flag, a stray argument), or None.
    Values are not converted: a doc's placeholders (`--steps N`, `--out DIR`) are fine."""
    command = typer.main.get_command(app)  # typer's own (vendored) click classes
    path, args = ["persona"], list(argv)
    while True:
        context = typer.Context(command, info_name=path[-1])
        try:
            _, rest, _ = command.make_parser(context).parse_args(args=args)
        except typer.TyperException as exc:  # click's UsageError: no such option, option needs a value
            return f"{' '.join(path)}: {exc.format_message()}"
        if not isinstance(command, typer.core.TyperGroup):
            return f"{' '.join(path)}: unexpected argument(s) {' '.join(rest)}" if rest else None
        if not rest:
            return None
        sub = command.get_command(context, rest[0])
        if sub is None:
            return f"{' '.join(path)}: no such command {rest[0]!r}"
        command, path, args = sub, [*path, rest[0]], rest[1:]


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for number, line in code_lines(doc.read_text(encoding="utf-8")):
            found += [(f"{doc.relative_to(ROOT)}:{number}", argv) for argv in persona_commands(line)]
    return found


def test_every_documented_persona_command_line_parses_with_the_real_cli():
    commands = documented_commands()
    assert len(commands) >= 20, commands  # the README's walkthrough alone has more
    problems = [f"{where}: {error}" for where, argv in commands if (error := parse_error(argv))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("line", "error"), [
    ("persona train --data d --out o --no-such-flag", "No such option: --no-such-flag"),
    ("persona trian --data d", "no such command 'trian'"),
    ("persona switch --persona p --version 2 extra", "unexpected argument(s) extra"),
    (".venv/bin/persona chat --persona p --show-facts | tee log  # fine", None),
    ("printf 'x\\n' | persona chat --persona p [--version N] ...", None),
    ("FOO=1 flock /work/heavy.lock persona chatt --persona p", "no such command 'chatt'"),
])
def test_the_checker_catches_what_drifts(line, error):
    assert list(persona_commands("STORE/<persona>/v<N>/ and the persona bot")) == []  # not commands
    (argv,) = persona_commands(line)
    found = parse_error(argv)
    assert (found is None) if error is None else (error in (found or "")), found
