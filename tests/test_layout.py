"""The shape of the omnid packages: no import cycles, and small modules that say their job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "omnid"
CLIENT = ROOT / "client" / "omnid_client"

MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The omnid modules ``name`` imports, anywhere in it (lazy and type-checking imports
    included): ``from X import Y`` counts as importing X.Y when that is a module."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def test_no_module_of_omnid_imports_itself_in_a_circle() -> None:
    graph = import_graph()
    seen = {"omnid.api", "omnid.jobs.reaper", "omnid.daemon.listener"}
    assert graph["omnid.daemon.app"] >= seen, "the graph sees imports"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = import_graph()
    graph["omnid.store"] = graph["omnid.store"] | {"omnid.api._context"}  # the store importing the API
    cycle = find_cycle(graph)
    assert cycle is not None and "omnid.store" in cycle and "omnid.api._context" in cycle


def test_handlers_never_see_the_daemon() -> None:
    for name, imported in import_graph().items():
        if name.startswith("omnid.api"):
            assert not any(m.startswith("omnid.daemon") for m in imported), name
    for path in (PACKAGE / "api").glob("*.py"):
        assert "caller.daemon" not in path.read_text(), path


def one_sentence_job(doc: str | None) -> str | None:
    """Why the opening paragraph of a module docstring is not a single sentence, or None
    when it is (details may follow in later paragraphs)."""
    if not doc or not doc.strip():
        return "no module docstring"
    opening = " ".join(doc.strip().split("\n\n")[0].split())
    if not re.search(r"[.!?]$", opening):
        return f"its opening paragraph does not end a sentence: {opening!r}"
    if re.search(r"[.!?]\s+[A-Z(`]", opening[:-1]):
        return f"its opening paragraph is more than one sentence: {opening!r}"
    return None


def test_the_docstring_check_tells_one_sentence_from_more() -> None:
    assert one_sentence_job("Reaping dead sessions, every minute.\n\nMore detail. And more.") is None
    assert one_sentence_job("Reaping. Also status.") is not None
    assert one_sentence_job("Reaping dead sessions") is not None
    assert one_sentence_job(None) is not None


@pytest.mark.parametrize("package", [PACKAGE, CLIENT], ids=["omnid", "omnid_client"])
def test_every_module_is_small_and_says_its_job_in_one_sentence(package: Path) -> None:
    failures = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_LINES:
            failures.append(f"{path.relative_to(ROOT)} has {lines} lines (the limit is {MAX_LINES})")
        why = one_sentence_job(ast.get_docstring(ast.parse(text, str(path))))
        if why:
            failures.append(f"{path.relative_to(ROOT)}: {why}")
    assert len(list(package.rglob("*.py"))) > 10, "the walk sees the package"
    assert not failures, "\n".join(failures)
