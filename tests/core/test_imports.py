"""The import graph of docs/ARCHITECTURE.md ("Who imports whom"), held by a test so that a change
cannot quietly make the core know a part, make one part reach into another, or close a circle.

Every import counts, at module level or inside a function (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "personafleet": ROOT / "personafleet",
    "persona_cli": ROOT / "cli" / "persona_cli",
    "persona_training": ROOT / "training" / "persona_training",
    "persona_serving": ROOT / "handlers" / "persona_serving",
    "persona_bot": ROOT / "bot" / "persona_bot",
    "persona_operator": ROOT / "operator" / "persona_operator",
}
# The arrows the architecture allows between packages (besides each package importing itself).
ALLOWED = {
    "personafleet": set(),
    "persona_training": {"personafleet"},
    "persona_serving": {"personafleet"},
    "persona_bot": {"personafleet"},
    "persona_operator": {"personafleet"},
    "persona_cli": {"personafleet", "persona_training", "persona_serving", "persona_bot", "persona_operator"},
}


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    return ".".join((package, *parts)).removesuffix(".__init__")


def imports_of(package: str, path: Path) -> set[str]:
    """Every project module `path` imports (absolute names; relative imports resolved)."""
    here = module_name(package, path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*here[: len(here) - node.level + 1], *filter(None, [node.module])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def project_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (names that are attributes, not modules, dropped)."""
    files = {module_name(p, f): (p, f) for p, folder in PACKAGES.items() for f in folder.rglob("*.py")}
    return {name: {i for i in imports_of(p, f) if i in files and i != name} for name, (p, f) in files.items()}


def test_every_package_imports_only_what_the_architecture_allows():
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in project_graph().items()
        for target in targets
        if (src := module.split(".")[0]) != (dst := target.split(".")[0]) and dst not in ALLOWED[src]
    )
    assert not wrong, "imports against docs/ARCHITECTURE.md's graph:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_package_has_an_import_circle(package):
    graph = {m: {t for t in ts if t.split(".")[0] == package and t != package}
             for m, ts in project_graph().items() if m.split(".")[0] == package and m != package}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_checker_sees_a_circle_and_a_forbidden_arrow():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    core_file = PACKAGES["personafleet"] / "routing.py"
    assert "personafleet.names" in imports_of("personafleet", core_file)
