"""The client's types as a typed tool sees them: mypy on code that uses it, and the two surfaces alike."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnid_client import AsyncClient, Client, _calls
from tests.helpers import ROOT

PACKAGE = ROOT / "client" / "omnid_client"

USES = '''
from typing import assert_type

from omnid_client import AsyncClient, Client, Session
from omnid_client.protocol import DaemonStatus, GetOrCreateResult, Memory, SearchHit


async def with_async_client() -> None:
    async with AsyncClient(fail_open=True) as client:
        assert_type(await client.get_or_create("tool", pid=1), GetOrCreateResult)
        assert_type(await client.find("tool"), Session | None)
        assert_type(await client.list_memories(), list[Memory])
        assert_type(await client.search("query", kinds=["message"]), list[SearchHit])
        assert_type(await client.status(), DaemonStatus)
        async with client.session("tool") as session:
            assert_type(session, Session | None)


def with_client() -> None:
    with Client() as client:
        assert_type(client.get_or_create("tool"), GetOrCreateResult)
        assert_type(client.find("tool", pid=1), Session | None)
        with client.session("tool") as session:
            assert_type(session, Session | None)
'''

MISUSES = '''
from omnid_client import AsyncClient, Client


async def misuse() -> None:
    client = AsyncClient()
    count: int = await client.get_or_create("tool")
    client.get("not awaited").session_id
    Client().add_message("sid", "robot", "hi")
'''


def test_mypy_sees_the_real_result_types_of_both_clients(tmp_path):
    (tmp_path / "uses.py").write_text(USES)
    (tmp_path / "misuses.py").write_text(MISUSES)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.11", "--no-error-summary",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "uses.py", "misuses.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT / "client")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("uses.py")], out.stdout
    misuses = sorted(e.split(": error:")[0] for e in errors if e.startswith("misuses.py"))
    # the result is not Any, a coroutine is not its result, a role outside the Literal is refused
    assert misuses == ["misuses.py:7", "misuses.py:8", "misuses.py:9"], out.stdout + out.stderr


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_client_and_async_client_expose_the_same_calls_with_the_same_signatures():
    sync, aio = public_methods(Client), public_methods(AsyncClient)
    assert sync.keys() == aio.keys()
    for name in sync:
        assert sync[name].parameters == aio[name].parameters, name
        if name != "session":  # a context manager in both, blocking and async
            assert sync[name].return_annotation == aio[name].return_annotation, name
            assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    calls = {name for name, _ in inspect.getmembers(_calls, inspect.isfunction) if not name.startswith("_")}
    assert calls == sync.keys() - {"connect", "close", "session"}
    for name in calls:
        builder, method = inspect.signature(getattr(_calls, name)), sync[name]
        assert list(builder.parameters.values()) == list(method.parameters.values())[1:], name
        assert builder.return_annotation == f"Call[{method.return_annotation}]", name


def module_name(path: Path) -> str:
    return ".".join(("omnid_client", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    """Each client module -> the client modules it imports when loaded (not lazily, not for types)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                submodules = {f"{target}.{a.name}" for a in node.names} & modules.keys()
                found.update(submodules if len(submodules) == len(node.names) else {target, *submodules})
        graph[name] = found
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_async_client_never_imports_the_blocking_one(import_graph):
    assert "omnid_client.aio" in import_graph and "omnid_client.client" in import_graph
    assert not reachable(import_graph, "omnid_client.aio") & {"omnid_client.client", "omnid_client._connection"}


def test_no_module_of_the_client_imports_itself_through_others(import_graph):
    assert {m for m in import_graph if m in reachable(import_graph, m)} == set()
