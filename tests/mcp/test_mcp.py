"""``omnid mcp`` end to end: the MCP SDK's own stdio client starts the server as a real child
process, which talks to a real daemon in a temp OMNID_HOME."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT, gone, wait_for

mcp = pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install '.[mcp]')")

import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

from omnid.mcp.tools import TOOLS, input_schema  # noqa: E402


def server_params(*extra: str, cwd: Path | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "omnid", "mcp", *extra], env={"OMNID_HOME": os.environ["OMNID_HOME"]},
        cwd=cwd,
    )


def with_server(body, *extra: str, cwd: Path | None = None):
    """Run ``body(session)`` against a fresh ``omnid mcp`` child; returns what it returns."""

    async def main():
        async with stdio_client(server_params(*extra, cwd=cwd)) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)

    return anyio.run(main)


async def call(session, name: str, arguments: dict | None = None) -> dict:
    result = await session.call_tool(name, arguments or {})
    assert not result.is_error, result.content
    return result.structured_content


async def error(session, name: str, arguments: dict | None = None) -> dict:
    result = await session.call_tool(name, arguments or {})
    assert result.is_error, result.structured_content
    assert result.content[0].text.startswith("omnid error ")
    return result.structured_content["error"]


def test_lists_every_tool_with_its_schema_and_serves_each(daemon, client, tmp_path):
    project = tmp_path / "proj"
    project.mkdir()

    async def body(s):
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert set(listed) == set(TOOLS)
        assert all(
            t.input_schema["type"] == "object" and "$ref" not in json.dumps(t.input_schema) for t in listed.values()
        )

        me = await call(s, "current_session")
        assert me["owner_pid"] == os.getpid() and me["tool_id"] == "agent"
        assert me["project"]["root"] == str(project)
        assert me["counters"] == {"messages": 0, "tokens": 0, "cost_usd": 0.0, "context_events": 0, "tasks": 0}
        sid = me["session_id"]

        appended = await call(s, "append_context", {"events": [
            {"kind": "file_access", "subject": "src/a.py", "importance": 0.9},
            {"kind": "search", "subject": "where is the reaper"},
            {"kind": "decision", "subject": "use pidfd for reaping"},
            {"kind": "memory_ref", "subject": "style"},
        ]})
        assert appended == {"appended": 4, "event_count": 4}
        ctx = await call(s, "get_context", {"max_files": 5})
        assert [f["path"] for f in ctx["files"]] == ["src/a.py"] and ctx["files"][0]["importance"] == 0.9
        assert [d["text"] for d in ctx["decisions"]] == ["use pidfd for reaping"]

        v1 = await call(s, "put_memory", {"key": "style", "value": "short"})
        await call(s, "put_memory", {"key": "style", "value": {"lines": 100}, "ttl": 3600})
        got = await call(s, "get_memory", {"key": "style"})
        assert got["value"] == {"lines": 100} and got["expires_at"] is not None
        assert got["project_id"] == v1["project_id"]
        assert [m["key"] for m in (await call(s, "list_memories"))["memories"]] == ["style"]
        history = await call(s, "memory_history", {"key": "style"})
        assert [v["value"] for v in history["versions"]] == ["short", {"lines": 100}]

        note = await call(s, "add_session_memory", {"content": "the reaper watches pidfds", "memory_type": "insight"})
        assert note["session_id"] == sid
        assert [m["memory_type"] for m in (await call(s, "list_session_memories"))["memories"]] == ["insight"]

        added = await call(s, "add_messages", {"messages": [
            {"role": "user", "content": "how are sessions reaped?"},
            {"role": "assistant", "content": "by watching pidfds", "tokens_used": 12, "cost_usd": 0.001},
        ]})
        assert added["message_count"] == 2 and added["total_tokens"] == 12
        page = await call(s, "list_messages", {"limit": 1})
        assert [m["content"] for m in page["messages"]] == ["how are sessions reaped?"] and page["next_after_seq"] == 1

        hits = (await call(s, "search", {"query": "pidfds"}))["hits"]
        assert {h["kind"] for h in hits} == {"message", "session_memory"}
        assert (await call(s, "search", {"query": "pidfd reaping", "scope": "session", "kinds": ["decision"]}))["hits"]

        summary = await call(s, "session_summary")
        assert (summary["session_id"], summary["message_count"], summary["context_events"]) == (sid, 2, 4)
        me = await call(s, "current_session")
        assert me["session_id"] == sid and me["counters"]["messages"] == 2 and me["counters"]["tokens"] == 12

        assert (await call(s, "delete_memory", {"key": "style"}))["deleted"] == 1
        return sid

    # An earlier session of the same project, ended: the only other one recent_sessions may list.
    other = client.get_or_create("other-tool", workspace=str(project)).session
    client.end(other.session_id)
    client.get_or_create("elsewhere", workspace=str(tmp_path))
    sid = with_server(body, cwd=project)

    async def recent(s):
        return await call(s, "recent_sessions", {"limit": 5})

    listed = with_server(recent, cwd=project)
    assert [x["session_id"] for x in listed["sessions"]] == [other.session_id]
    assert client.get(sid).message_count == 2


def test_resources_hold_the_context_and_the_memories(daemon, tmp_path):
    async def body(s):
        uris = {str(r.uri) for r in (await s.list_resources()).resources}
        assert uris == {"omnid://session/context", "omnid://project/memories"}
        await call(s, "append_context", {"events": [{"kind": "file_access", "subject": "README.md"}]})
        await call(s, "put_memory", {"key": "k", "value": 1})
        ctx = json.loads((await s.read_resource("omnid://session/context")).contents[0].text)
        memories = json.loads((await s.read_resource("omnid://project/memories")).contents[0].text)
        return ctx, memories

    ctx, memories = with_server(body, cwd=tmp_path)
    assert [f["path"] for f in ctx["files"]] == ["README.md"]
    assert [m["key"] for m in memories["memories"]] == ["k"]


def test_context_pack_and_similar_memories(daemon, client, tmp_path):
    """The pack an agent reads when it resumes, as Markdown text or as JSON, the same as the
    client's; and memories found by their embeddings."""

    async def body(s):
        sid = (await call(s, "current_session"))["session_id"]
        client.update_session(sid, title="Port the lexer", metadata={"goal": "No recursion"})
        await call(s, "append_context", {"events": [
            {"kind": "file_access", "subject": "src/lexer.py", "importance": 0.9},
            {"kind": "decision", "subject": "use an explicit stack"},
        ]})
        await call(s, "put_memory", {"key": "east", "value": "points east", "embedding": [1.0, 0.0]})
        await call(s, "put_memory", {"key": "north", "value": "points north", "embedding": [0.0, 1.0]})
        await call(s, "add_session_memory", {"content": "north-east", "embedding": [1.0, 1.0]})
        text = await s.call_tool("context_pack", {"budget_tokens": 400})
        structured = await call(s, "context_pack", {"budget_tokens": 400, "markdown": False})
        tiny = await call(s, "context_pack", {"budget_tokens": 0})
        similar = await call(s, "similar_memories", {"vector": [0.9, 0.1], "k": 2})
        mismatched = await error(s, "similar_memories", {"vector": [1.0, 0.0, 0.0]})
        no_model = await error(s, "similar_memories", {"text": "east"})
        neither = await error(s, "similar_memories", {})
        return sid, text, structured, tiny, similar, mismatched, no_model, neither

    sid, text, structured, tiny, similar, mismatched, no_model, neither = with_server(body, cwd=tmp_path)
    assert no_model["code"] == "unsupported" and "embedding_model" in no_model["message"]
    assert neither["code"] == "invalid" and "exactly one of vector and text" in neither["message"]
    assert not text.is_error
    markdown = text.content[0].text  # the Markdown itself, ready to inject, not JSON
    assert markdown == text.structured_content["markdown"] == client.pack_context(sid, budget_tokens=400).markdown
    assert "Port the lexer" in markdown and "No recursion" in markdown and "src/lexer.py" in markdown
    assert text.structured_content["session_id"] == sid and 0 < text.structured_content["tokens"] <= 400
    assert structured["markdown"] == markdown and structured["title"] == "Port the lexer"
    assert {sec["name"] for sec in structured["sections"]} >= {"files", "decisions"}
    assert tiny["markdown"] == "" and tiny["tokens"] == 0
    assert [h["memory"]["key"] if h["memory"] else h["session_memory"]["content"] for h in similar["hits"]] == [
        "east", "north-east",
    ]
    assert similar["dim"] == 2 and similar["hits"][0]["score"] > similar["hits"][1]["score"]
    assert mismatched["code"] == "invalid" and "3 dimensions" in mismatched["message"]


def test_every_failure_is_a_tool_error_with_a_typed_code(daemon, tmp_path):
    async def body(s):
        errors = [
            await error(s, "get_memory", {"key": "missing"}),
            await error(s, "get_memory", {"key": ""}),
            await error(s, "get_memory", {}),
            await error(s, "get_memory", {"key": "k", "extra": 1}),
            await error(s, "append_context", {"events": [{"kind": "gossip", "subject": "x"}]}),
            await error(s, "put_memory", {"key": "k", "value": "x" * (300 * 1024)}),
            await error(s, "session_summary", {"session_id": "not-a-session"}),
            await error(s, "no_such_tool"),
            await error(s, "list_memories", {"limit": "ten"}),
            await error(s, "add_session_memory", {"content": "x" * (256 * 1024 + 1)}),
        ]
        still = await call(s, "current_session")  # the server lives on
        return errors, still

    errors, still = with_server(body, cwd=tmp_path)
    assert [e["code"] for e in errors] == [
        "not_found", "invalid", "invalid", "invalid", "invalid", "too_large", "invalid", "not_found", "invalid",
        "too_large",
    ]
    assert "missing" in errors[0]["message"]
    # Bad arguments read as the daemon's own refusals do: the field and what it allows.
    sentences = {i: (errors[i]["message"], errors[i]["details"]) for i in (1, 2, 3, 4, 8, 9)}
    assert sentences == {
        1: ("key must be text of 1-256 characters", {"field": "key", "path": "key",
                                                     "allowed": "text of 1-256 characters", "tool": "get_memory"}),
        2: ("key is required: it must be text of 1-256 characters", {
            "field": "key", "path": "key", "allowed": "text of 1-256 characters", "tool": "get_memory"}),
        3: ("there is no field extra: the fields are key", {"field": "extra", "path": "extra", "tool": "get_memory"}),
        4: ("events[0].kind must be one of 'decision', 'file_access', 'file_change', 'memory_ref', 'search', "
            "not 'gossip'", {"field": "events", "path": "events[0].kind", "tool": "append_context",
                             "allowed": "one of 'decision', 'file_access', 'file_change', 'memory_ref', 'search'"}),
        8: ("limit must be an integer from 1 to 1000, not a string", {
            "field": "limit", "path": "limit", "allowed": "an integer from 1 to 1000", "tool": "list_memories"}),
        9: ("content must be text of 1-262144 characters", {
            "field": "content", "path": "content", "allowed": "text of 1-262144 characters",
            "tool": "add_session_memory"}),
    }
    assert still["session_id"]


def test_a_restarted_server_resumes_the_agents_session(daemon, tmp_path):
    async def session_id(s):
        return (await call(s, "current_session"))["session_id"]

    first = with_server(session_id, cwd=tmp_path)
    assert with_server(session_id, cwd=tmp_path) == first


AGENT = textwrap.dedent(
    """
    import os, sys, anyio, psutil
    from mcp import ClientSession, StdioServerParameters, stdio_client

    async def main():
        params = StdioServerParameters(command=sys.executable, args=["-m", "omnid", "mcp"],
                                       env={"OMNID_HOME": os.environ["OMNID_HOME"]})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("current_session", {})
                server = [p.pid for p in psutil.Process().children()]
                print(result.structured_content["session_id"], *server, flush=True)
                await anyio.sleep(600)

    anyio.run(main)
    """
)


def test_the_session_is_reaped_when_the_agent_dies(daemon, client, tmp_path):
    """A real agent process starts the server through the SDK, then is killed."""
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    agent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        sid, *servers = agent.stdout.readline().split()
        session = client.get(sid)
        assert session.owner_pid == agent.pid and session.live and len(servers) == 1
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        wait_for(lambda: client.get(sid).end_reason == "reaped", what="the agent's session to be reaped")
        wait_for(lambda: gone(int(servers[0])), what="the MCP server to exit once its agent is gone")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        agent.stdout.close()


def test_the_daemon_and_the_client_never_import_mcp():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import omnid, omnid.api, omnid.daemon, omnid.jobs, omnid.store, omnid_client
        names = ["omnid.cli", "omnid.cli.group"]
        for pkg in (omnid.daemon, omnid.jobs, omnid.api, omnid.store, omnid_client):
            names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        from omnid_client import AsyncClient, Client
        print(len(names), sorted(m for m in sys.modules if m == "mcp" or m.startswith(("mcp.", "mcp_types"))))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = run.stdout.split(maxsplit=1)
    assert int(out[0]) > 40 and out[1].strip() == "[]"


def test_the_readme_documents_every_tool_and_its_arguments():
    readme = (ROOT / "README.md").read_text()
    for name, (args, _, _) in TOOLS.items():
        row = re.search(rf"^\| `{name}` \|(.*)$", readme, re.MULTILINE)
        assert row, f"README has no row for the tool {name}"
        assert set(re.findall(r"`(\w+)`", row.group(1))) >= set(input_schema(args)["properties"]), row.group(0)
    documented = re.search(r"<summary>The tools' input JSON schemas.*?```json\n(.*?)```", readme, re.DOTALL).group(1)
    assert json.loads(documented) == {name: input_schema(args) for name, (args, _, _) in TOOLS.items()}
