"""``omnid hook``: agent hook events (Claude Code's JSON shapes) recorded against the session
of the real agent process that ran the hook, through ``sh -c`` as agents run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from omnid.offline.agent import agent_pid
from tests.helpers import wait_for

AGENT = textwrap.dedent(
    """
    import subprocess, sys
    # A stand-in agent: runs its hook command through sh -c once per event line, like Claude Code.
    command = sys.argv[1]
    for line in sys.stdin:
        done = subprocess.run(["sh", "-c", command], input=line.encode(), capture_output=True)
        print(done.returncode, len(done.stdout), flush=True)
    """
)


@pytest.fixture
def agent(tmp_path):
    """A live agent process; ``agent.send(event)`` runs its hook on one event and returns
    (exit status, bytes printed on stdout)."""
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    hook = f"{sys.executable} -m omnid hook; true"  # '; true': sh stays between agent and hook
    proc = subprocess.Popen(
        [sys.executable, str(script), hook], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )

    def send(event) -> tuple[int, int]:
        proc.stdin.write((event if isinstance(event, str) else json.dumps(event)) + "\n")
        proc.stdin.flush()
        status, printed = proc.stdout.readline().split()
        return int(status), int(printed)

    proc.send = send
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)
    proc.stdout.close()


def claude(event: str, cwd, **fields) -> dict:
    return {
        "session_id": "c0ffee", "transcript_path": "/tmp/t.jsonl", "cwd": str(cwd), "hook_event_name": event, **fields,
    }


def test_a_claude_code_session_is_recorded_against_the_agent(daemon, client, agent, tmp_path):
    assert agent.send(claude("SessionStart", tmp_path, source="startup")) == (0, 0)
    session = client.find("agent", pid=agent.pid)
    assert session is not None and session.session_type == "agent" and session.workspace == str(tmp_path)
    assert session.metadata == {"via": "hook", "agent_session_id": "c0ffee", "transcript_path": "/tmp/t.jsonl"}
    sid = session.session_id

    events = [
        claude("UserPromptSubmit", tmp_path, prompt="fix the reaper"),
        claude("PreToolUse", tmp_path, tool_name="Read", tool_input={"file_path": f"{tmp_path}/reaper.py"}),
        claude(
            "PostToolUse", tmp_path, tool_name="Edit",
            tool_input={"file_path": "reaper.py", "old_string": "a", "new_string": "b"}, tool_response={"ok": True},
        ),
        claude("PostToolUse", tmp_path, tool_name="Grep", tool_input={"pattern": "pidfd", "path": str(tmp_path)}),
        claude("PostToolUse", tmp_path, tool_name="Bash", tool_input={"command": "make test"}),
        claude("Notification", tmp_path, message="Claude needs your permission"),
        claude("Stop", tmp_path, stop_hook_active=False),
    ]
    assert [agent.send(e) for e in events] == [(0, 0)] * len(events)

    [message] = client.list_messages(sid).messages
    assert (message.role, message.content, message.message_type) == ("user", "fix the reaper", "prompt")
    ctx = client.get_context(sid)
    assert {(f.path, f.importance) for f in ctx.files} == {(f"{tmp_path}/reaper.py", 0.8)}
    assert [(c.path, c.change) for c in ctx.changes] == [(f"{tmp_path}/reaper.py", "edit")]
    assert [(s.query, s.detail) for s in ctx.searches] == [("pidfd", "Grep")]
    [generic] = ctx.decisions
    assert generic.text == "Notification: Claude needs your permission"
    assert json.loads(generic.detail)["hook_event_name"] == "Notification"

    assert agent.send(claude("SessionEnd", tmp_path, reason="exit")) == (0, 0)
    assert client.get(sid).end_reason == "ended"
    # The next event (after /clear, say) starts a new session for the same agent.
    agent.send(claude("SessionStart", tmp_path, source="clear"))
    assert client.find("agent", pid=agent.pid).session_id != sid


@pytest.mark.parametrize(
    "payload",
    ["", "not json", "[1, 2]", json.dumps({"what": "an unknown shape"}), json.dumps({"hook_event_name": "Teleport"})],
    ids=["empty", "garbage", "array", "unknown-shape", "unknown-event"],
)
def test_unknown_input_becomes_a_generic_context_event(daemon, client, agent, payload):
    assert agent.send(payload) == (0, 0)
    [decision] = client.get_context(client.find("agent", pid=agent.pid).session_id).decisions
    assert decision.text in ("hook event", "Teleport")
    assert decision.detail == (payload or None) or json.loads(decision.detail) == json.loads(payload)


def test_the_hook_fails_open_and_quickly_when_omnid_cannot_be_reached(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNID_HOME", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")  # a state dir that cannot be created: no daemon, ever
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "omnid", "hook"], input=json.dumps(claude("Stop", tmp_path)),
        capture_output=True, text=True, timeout=30,
    )
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr.startswith("omnid hook: ") and len(r.stderr.splitlines()) == 1
    assert time.monotonic() - started < 10


def test_a_huge_event_is_drained_and_still_recorded(daemon, client, agent, tmp_path):
    big = claude(
        "PostToolUse", tmp_path, tool_name="Read", tool_input={"file_path": "/x"}, tool_response="y" * (9 << 20)
    )
    assert agent.send(big) == (0, 0)
    [decision] = client.get_context(client.find("agent", pid=agent.pid).session_id).decisions
    assert decision.text == "hook event" and decision.detail.startswith('{"session_id"')


def test_the_agent_is_found_past_shell_wrappers_and_launchers(spawn_owner):
    chain = "exec env X=1 sh -c 'python3 -c \"import time; time.sleep(60)\"; true'"
    outer = subprocess.Popen(["bash", "-c", chain + "; true"])
    try:
        def leaf():
            import psutil

            for kid in psutil.Process(outer.pid).children(recursive=True):
                try:  # a wrapper may exec or exit between the listing and this read
                    if kid.name().startswith("python"):
                        return kid
                except psutil.NoSuchProcess:
                    continue
            return None

        python = wait_for(leaf, what="the wrapped python")
        # python's parents: sh -c (skipped), env (skipped), bash -c (skipped), then this test.
        assert agent_pid(python.ppid()) == os.getpid()
        assert agent_pid(os.getpid()) == os.getpid()  # a non-wrapper is its own agent
    finally:
        outer.kill()
        outer.wait()
