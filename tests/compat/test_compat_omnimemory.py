"""``omnid compat omnimemory``: OmniMemory's session HTTP API served from a real daemon, hit
with real HTTP requests in the shapes OmniMemory's MCP server sends (mrtozner/omnimemory,
mcp_server/omnimemory_mcp.py and session_manager.py), and refusing other users."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from omnid_client import Client
from tests.helpers import wait_for

NOBODY = 65534
TOOL = "claude-code"


class Compat:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert status == 200, (path, status, answer)
        return answer


@pytest.fixture
def compat(daemon) -> Iterator[Compat]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", "compat", "omnimemory", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        assert m, first + (proc.stderr.read() if proc.poll() is not None else "")
        yield Compat(proc, int(m[1]))
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def project_of(workspace: Path) -> str:
    return hashlib.sha256(str(workspace).encode()).hexdigest()[:16]


def test_an_omnimemory_mcp_server_session_end_to_end(compat: Compat, client: Client, tmp_path, spawn_owner):
    ws = tmp_path / "proj"
    (ws / ".git").mkdir(parents=True)
    assert compat.ok("GET", "/health") == {"status": "healthy"}

    # _start_session: SessionManager.create_session, then (as a fallback) the same request again.
    mcp = spawn_owner()
    instance = str(uuid.uuid4())
    register = {"tool_id": TOOL, "process_id": mcp.pid, "instance_id": instance, "workspace_path": str(ws)}
    first = compat.ok("POST", "/sessions/get_or_create", register)
    assert (first["status"], first["tool_id"], first["process_id"]) == ("created", TOOL, mcp.pid)
    sid = first["session_id"]
    assert compat.ok("POST", "/sessions/get_or_create", register)["session_id"] == sid
    session = client.get(sid)
    assert (session.owner_pid, session.workspace, session.ended_at) == (mcp.pid, str(ws), None)
    assert session.metadata == {"omnimemory": {"instance_id": instance}}

    # _track_tool_call on every tool call
    beat = compat.ok("POST", f"/sessions/{sid}/heartbeat")
    assert beat["status"] == "active" and beat["session_id"] == sid

    # The context endpoints (POST appends, GET reads), as the metrics API defines them.
    compat.ok("POST", f"/sessions/{sid}/context", {"file_path": f"{ws}/src/main.py", "file_importance": 0.8,
                                                    "search_query": "authentication implementation"})
    compat.ok("POST", f"/sessions/{sid}/context", {"decision": "Use JWT for auth tokens"})
    appended = compat.ok("POST", f"/sessions/{sid}/context", {"memory_id": "mem_0123456789ab", "memory_key": "arch"})
    context = appended["context"]
    assert [f["path"] for f in context["files_accessed"]] == [f"{ws}/src/main.py"]
    assert context["file_importance_scores"] == {f"{ws}/src/main.py": 0.8}
    assert [s["query"] for s in context["recent_searches"]] == ["authentication implementation"]
    assert [d["decision"] for d in context["decisions"]] == ["Use JWT for auth tokens"]
    assert [(m["id"], m["key"]) for m in context["saved_memories"]] == [("mem_0123456789ab", "arch")]
    got = compat.ok("GET", f"/sessions/{sid}/context")
    assert got["context"] == context and got["compressed"] is False
    stored = client.get_context(sid)  # the same, in omnid
    assert [(f.path, f.importance) for f in stored.files] == [(f"{ws}/src/main.py", 0.8)]
    assert [d.text for d in stored.decisions] == ["Use JWT for auth tokens"]
    assert compat.ok("GET", f"/sessions/{sid}/activity?limit=20")["operations"][0]["file_path"] == f"{ws}/src/main.py"

    # Project memories, by OmniMemory's project id (the workspace path's hash).
    project = project_of(ws)
    made = compat.ok("POST", f"/projects/{project}/memories",
                     {"key": "architecture", "value": "Microservices ✓", "metadata": {"tags": ["design"]},
                      "ttl_seconds": 2592000})
    assert made["memory_id"].startswith("mem_") and made["key"] == "architecture"
    one = compat.ok("GET", f"/projects/{project}/memories?key=architecture")["memory"]
    assert (one["value"], one["metadata"], one["ttl_seconds"]) == ("Microservices ✓", {"tags": ["design"]}, 2592000)
    listed = compat.ok("GET", f"/projects/{project}/memories?limit=20")
    assert listed["count"] == 1 and listed["memories"][0]["key"] == "architecture"
    assert client.get_memory("architecture", workspace=str(ws)).value == "Microservices ✓"
    assert compat.call("GET", f"/projects/{project}/memories?key=nothing") == (404, {"detail": "Memory not found"})
    assert compat.call("GET", "/projects/0123456789abcdef/memories") == (404, {"detail": "Project not found"})

    shown = compat.ok("GET", f"/sessions/{sid}")
    assert (shown["session_id"], shown["tool_id"], shown["process_id"], shown["instance_id"], shown["project_id"],
            shown["workspace_path"], shown["ended_at"]) == (sid, TOOL, mcp.pid, instance, project, str(ws), None)

    # A second copy of the MCP server with the same instance id while the first still runs:
    # the instance id is the session's resume key, and a session never has two live owners.
    second = spawn_owner()
    status, answer = compat.call("POST", "/sessions/get_or_create", {**register, "process_id": second.pid})
    assert status == 409 and sid in answer["detail"], answer
    assert client.get(sid).owner_pid == mcp.pid

    # The MCP server restarts: its process is gone, a new one sends the same instance id
    # and is handed the same session back (omnid's "resumed", which OmniMemory calls
    # "existing"), with its context, before or after omnid has noticed the old one died.
    mcp.kill()
    mcp.wait()
    restarted = spawn_owner()
    again = {**register, "process_id": restarted.pid}
    after = compat.ok("POST", "/sessions/get_or_create", again)
    assert (after["status"], after["session_id"], after["process_id"]) == ("existing", sid, restarted.pid)
    continued = client.get(sid)
    assert (continued.owner_pid, continued.ended_at, continued.resume_key) == (restarted.pid, None, instance)
    assert continued.metadata == {"omnimemory": {"instance_id": instance}}
    assert [o.pid for o in client.session_owners(sid).owners] == [mcp.pid, restarted.pid]
    assert compat.ok("GET", f"/sessions/{sid}/context")["context"] == context
    assert compat.ok("GET", f"/sessions/{sid}")["process_id"] == restarted.pid
    restarted.kill()
    restarted.wait()
    wait_for(lambda: client.get(sid).end_reason == "reaped", what="the restarted process's session to be reaped")
    third = spawn_owner()  # and once reaped, the next restart resumes it too
    resumed = compat.ok("POST", "/sessions/get_or_create", {**register, "process_id": third.pid})
    assert (resumed["status"], resumed["session_id"]) == ("existing", sid)
    assert client.get(sid).ended_at is None

    ended = compat.ok("POST", f"/sessions/{sid}/end")
    assert ended["status"] == "ended" and ended["summary"]["ended_at"] is not None
    assert client.get(sid).end_reason == "ended"

    # /sessions/start, as _register_session sends it: no process id (the caller owns it).
    start = {"session_id": None, "tool_id": TOOL, "started_at": "2024-01-01T00:00:00"}
    started = compat.ok("POST", "/sessions/start", start)
    assert started["status"] == "started" and client.get(started["session_id"]).owner_pid == os.getpid()


def test_bad_requests_get_clear_errors_and_the_server_goes_on(compat: Compat, client: Client):
    assert compat.call("POST", "/sessions/None/end") == (404, {"detail": "Session None not found"})
    assert compat.call("GET", "/no/such/thing")[0] == 404
    assert compat.call("POST", "/sessions/get_or_create", raw=b"{not json")[0] == 422
    assert compat.call("POST", "/sessions/get_or_create", {"process_id": 1})[1] == {"detail": "tool_id is required"}
    assert compat.call("POST", "/sessions/get_or_create", {"tool_id": TOOL, "process_id": "x"})[0] == 422
    assert compat.call("POST", "/sessions/get_or_create", {"tool_id": TOOL, "process_id": 2_000_000_000})[0] == 422
    unknown = str(uuid.uuid4())
    assert compat.call("POST", f"/sessions/{unknown}/heartbeat")[0] == 404
    # A body over the limit is refused from its Content-Length, before it is read.
    conn = http.client.HTTPConnection("127.0.0.1", compat.port, timeout=10)
    conn.putrequest("POST", "/sessions/get_or_create")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    answer = conn.getresponse()
    assert (answer.status, json.loads(answer.read())) == (413, {"detail": f"request body over {1 << 20} bytes"})
    conn.close()
    assert compat.ok("GET", "/health") == {"status": "healthy"}


def test_connections_from_another_user_are_refused(compat: Compat, client: Client):
    probe = (
        "import urllib.request\n"
        "try:\n"
        f"    urllib.request.urlopen('{compat.url}/health', timeout=10).read()\n"
        "    print('answered')\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    run = subprocess.run(["/usr/bin/python3", "-c", probe], user=NOBODY, group=NOBODY, capture_output=True,
                         text=True, timeout=30, cwd="/")
    assert run.stdout.startswith("refused"), (run.stdout, run.stderr)
    assert compat.ok("GET", "/health") == {"status": "healthy"}  # this user still gets answers
    compat.proc.terminate()
    _, err = compat.proc.communicate(timeout=10)
    assert f"uid {NOBODY} is not {os.geteuid()}" in err


def test_it_listens_on_loopback_only_and_never_on_a_taken_port(compat: Compat):
    import psutil

    listening = [c.laddr for c in psutil.Process(compat.proc.pid).net_connections("inet") if c.status == "LISTEN"]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", compat.port)]
    taken = subprocess.run([sys.executable, "-m", "omnid", "compat", "omnimemory", "--port", str(compat.port)],
                           capture_output=True, text=True, timeout=30)
    assert taken.returncode != 0 and f"cannot listen on 127.0.0.1:{compat.port}" in taken.stderr
