"""The ``omnid`` command against a real daemon in a temp OMNID_HOME (the ``home`` fixture).

Output checks drive the command in-process through click's runner (the same code, the
same real daemon, a fraction of the start-up cost); what only a separate process shows
(exit statuses as a shell sees them, the parent process a session binds to, starting
and stopping daemons) runs ``python -m omnid`` as a child process.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner

import omnid
from omnid.cli import main
from omnid.cli._style import iso
from omnid.identity import boot_id, inspect
from omnid_client import Client, Unavailable
from tests.helpers import wait_for

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NOT_RUNNING = 3

Run = Callable[..., subprocess.CompletedProcess]


def omnid_process(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``python -m omnid ARGS`` as a child process, with this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "omnid", *args],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def omnid_inproc(*args: str) -> subprocess.CompletedProcess:
    """The same command run in this process by click's test runner."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def ok(*args: str, run: Run = omnid_inproc) -> str:
    r = run(*args)
    assert r.returncode == 0, f"omnid {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def ok_json(*args: str, run: Run = omnid_inproc):
    return json.loads(ok(*args, "--json", run=run))


def fields(text: str) -> dict[str, str]:
    """``name: value`` lines (as ``status`` and ``sessions show`` print them) as a dict."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z ]+):\s+(.*)$", line)
        assert m, f"not a 'name: value' line: {line!r}"
        out[m.group(1)] = m.group(2)
    return out


def table(text: str) -> tuple[str, list[list[str]]]:
    """The header line and the whitespace-split rows of a printed table."""
    lines = text.splitlines()
    assert lines, "no output"
    return lines[0], [line.split() for line in lines[1:]]


def start_session(tool: str, pid: int, *extra: str) -> str:
    out = ok("session", "start", "--tool", tool, "--pid", str(pid), *extra)
    assert UUID.fullmatch(out.strip()), out
    return out.strip()


def dead_pid() -> int:
    """The pid of a process that has exited and been waited for."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stop_and_wait(timeout: float = 15.0) -> None:
    """``omnid stop``, then wait until ``omnid status`` reports it gone and its process has exited."""
    pid = ok_json("status")["pid"]
    assert "is stopping" in ok("stop")
    wait_for(lambda: omnid_inproc("status").returncode == NOT_RUNNING, timeout, what="status to say not running")
    wait_for(lambda: not process_exists(pid), timeout, interval=0.02, what=f"daemon pid {pid} to exit")


@pytest.fixture
def no_daemon(home):
    """For commands that must not start a daemon: fails the test if one was started,
    after stopping it, so a regression does not leave daemons behind."""
    yield home
    if (home / "run" / "omnid.sock").exists():
        try:
            with Client(autostart=False) as client:
                pid = client.connect().pid
                client.shutdown()
            wait_for(lambda: not process_exists(pid), what=f"daemon pid {pid} to exit")
        except Unavailable:
            pass
        pytest.fail("the command started a daemon")


def process_exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


# --- status -----------------------------------------------------------------------


def test_status_without_a_daemon_exits_3_and_starts_none(no_daemon):
    home = no_daemon
    r = omnid_process("status")
    assert r.returncode == NOT_RUNNING
    assert "not running" in r.stdout
    assert str(home / "run" / "omnid.sock") in r.stdout

    r = omnid_process("status", "--json")
    assert r.returncode == NOT_RUNNING
    answer = json.loads(r.stdout)
    assert answer["running"] is False
    assert answer["sockets_tried"] == [str(home / "run" / "omnid.sock")]


def test_status_with_a_daemon(daemon, spawn_owner, home):
    start_session("status-tool", spawn_owner().pid)

    status = fields(ok("status", run=omnid_process))
    assert f"pid {daemon.pid}" in status["omnid"]
    assert f"version {omnid.__version__}" in status["omnid"]
    assert status["socket"] == str(daemon.socket)
    assert status["database"].startswith(str(home / "omnid.db") + " ")
    assert status["live sessions"] == "1"

    answer = ok_json("status", run=omnid_process)
    assert answer["running"] is True
    assert answer["pid"] == daemon.pid
    assert answer["live_sessions"] == 1
    assert answer["socket"] == str(daemon.socket)
    assert answer["database"] == str(home / "omnid.db")
    assert answer["version"] == omnid.__version__


# --- session start / find -----------------------------------------------------------


def test_session_start_prints_one_id_per_shell(daemon, client):
    # Both commands are children of the same shell, so they share one session; the
    # builtin echo at the end keeps sh from exec'ing the last command in its place.
    script = '"$0" -m omnid session start --tool sh-tool; "$0" -m omnid session start --tool sh-tool; ' \
             '"$0" -m omnid session find --tool sh-tool; echo "$$"'

    def run_shell() -> list[str]:
        r = subprocess.run(
            ["sh", "-c", script, sys.executable], check=False, capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    first, again, found, shell_pid = run_shell()
    assert UUID.fullmatch(first)
    assert again == first and found == first
    session = client.get(first)
    assert session.owner_pid == int(shell_pid)
    assert session.tool_id == "sh-tool"

    other, *_ = run_shell()
    assert UUID.fullmatch(other) and other != first, "another shell is another owner"

    # The owner was the shell, which has exited: the daemon reaps its session.
    wait_for(lambda: client.get(first).end_reason == "reaped", what="the shell's session to be reaped")


def test_session_start_with_pid_binds_that_process(daemon, client, spawn_owner):
    owner = spawn_owner()
    sid = start_session("pid-tool", owner.pid)
    session = client.get(sid)
    assert session.owner_pid == owner.pid
    assert session.live


def test_session_start_json_says_created_then_existing(daemon, spawn_owner):
    pid = str(spawn_owner().pid)
    first = ok_json("session", "start", "--tool", "json-tool", "--pid", pid)
    second = ok_json("session", "start", "--tool", "json-tool", "--pid", pid)
    assert first["status"] == "created"
    assert second["status"] == "existing"
    assert first["session"]["session_id"] == second["session"]["session_id"]
    assert first["session"]["owner_pid"] == int(pid)


def test_session_start_stores_options_and_metadata(daemon, client, spawn_owner):
    sid = start_session(
        "meta-tool", spawn_owner().pid,
        "--type", "review", "--tool-version", "2.5", "--workspace", "/some/where",
        "--meta", "a=1", "--meta", "b=x=y", "--meta", "empty=",
    )
    session = client.get(sid)
    assert session.metadata == {"a": "1", "b": "x=y", "empty": ""}
    assert (session.session_type, session.tool_version, session.workspace) == ("review", "2.5", "/some/where")


@pytest.mark.parametrize("bad", ["novalue", "=value"])
def test_session_start_rejects_bad_meta_as_a_usage_error(no_daemon, bad):
    r = omnid_inproc("session", "start", "--tool", "t", "--pid", str(os.getpid()), "--meta", bad)
    assert r.returncode == 2
    assert "KEY=VALUE" in r.stderr


@pytest.mark.parametrize(("pid", "code"), [(lambda: 0, "invalid"), (dead_pid, "not_found")], ids=["zero", "dead"])
def test_session_start_for_an_impossible_owner_fails_cleanly(daemon, pid, code):
    r = omnid_inproc("session", "start", "--tool", "t", "--pid", str(pid()))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"omnid: {code}: ")


def test_session_find(daemon, spawn_owner):
    owner, stranger = spawn_owner(), spawn_owner()
    sid = start_session("find-tool", owner.pid)

    assert ok("session", "find", "--tool", "find-tool", "--pid", str(owner.pid)).strip() == sid
    assert ok_json("session", "find", "--tool", "find-tool", "--pid", str(owner.pid))["session"]["session_id"] == sid

    for args in (["--tool", "other-tool", "--pid", str(owner.pid)], ["--tool", "find-tool", "--pid", str(stranger.pid)],
                 ["--tool", "find-tool", "--pid", str(dead_pid())]):
        r = omnid_inproc("session", "find", *args)
        assert (r.returncode, r.stdout) == (1, ""), args
    r = omnid_inproc("session", "find", "--tool", "other-tool", "--pid", str(owner.pid), "--json")
    assert r.returncode == 1 and json.loads(r.stdout) == {"session": None}


# --- sessions list / show / end --------------------------------------------------------


@pytest.fixture
def population(daemon, client, spawn_owner) -> list[dict]:
    """Five sessions of two tools, one ended; returned newest first as the CLI lists them."""
    made = []
    for tool in ("alpha", "beta", "alpha", "beta", "alpha"):
        s = client.get_or_create(tool, pid=spawn_owner().pid).session
        made.append({"id": s.session_id, "tool": tool, "pid": s.owner_pid, "status": "live"})
    client.end(made[1]["id"])
    made[1]["status"] = "ended"
    return made[::-1]


HEADER = re.compile(
    r"^SESSION +TOOL +PID +TYPE +STATUS +STARTED +LAST ACTIVE +DURATION +WORKSPACE +FLAGS +TAGS +TITLE$"
)


def test_sessions_list_prints_a_table_newest_first(population):
    header, rows = table(ok("sessions", "list"))
    assert HEADER.match(header), header
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        (s["id"], s["tool"], str(s["pid"]), s["status"]) for s in population
    ]

    answer = ok_json("sessions", "list")
    assert [s["session_id"] for s in answer["sessions"]] == [s["id"] for s in population]
    assert answer["next_cursor"] is None


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        (["--tool", "alpha"], lambda s: s["tool"] == "alpha"),
        (["--status", "live"], lambda s: s["status"] == "live"),
        (["--status", "ended"], lambda s: s["status"] == "ended"),
        (["--tool", "beta", "--status", "live"], lambda s: s["tool"] == "beta" and s["status"] == "live"),
    ],
    ids=lambda v: "".join(v) if isinstance(v, list) else "",
)
def test_sessions_list_filters(population, args, keep):
    expected = [s["id"] for s in population if keep(s)]
    _, rows = table(ok("sessions", "list", *args))
    assert [r[0] for r in rows] == expected
    assert [s["session_id"] for s in ok_json("sessions", "list", *args)["sessions"]] == expected


def test_sessions_list_with_nothing_to_show(daemon):
    assert ok("sessions", "list").strip() == "no sessions"
    assert ok_json("sessions", "list") == {"sessions": [], "next_cursor": None}


def test_sessions_list_pages_with_a_cursor(population):
    expected = [s["id"] for s in population]

    seen, cursor = [], []
    for _ in range(10):
        r = omnid_inproc("sessions", "list", "--limit", "2", *cursor)
        assert r.returncode == 0, r.stderr
        _, rows = table(r.stdout)
        assert 1 <= len(rows) <= 2
        seen += [row[0] for row in rows]
        m = re.fullmatch(r"more: --cursor (\S+)\n", r.stderr)
        if m is None:
            assert r.stderr == ""
            break
        cursor = ["--cursor", m.group(1)]
    assert seen == expected

    seen, cursor = [], []
    for _ in range(10):
        page = ok_json("sessions", "list", "--limit", "2", *cursor)
        seen += [s["session_id"] for s in page["sessions"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert seen == expected


@pytest.mark.parametrize("args", [["--status", "dead"], ["--limit", "0"], ["--bogus"]])
def test_sessions_list_rejects_bad_options(no_daemon, args):
    assert omnid_inproc("sessions", "list", *args).returncode == 2


def test_sessions_show(daemon, client, spawn_owner):
    owner = spawn_owner()
    sid = start_session("show-tool", owner.pid, "--tool-version", "3.1", "--workspace", "/ws", "--meta", "k=v")

    shown = fields(ok("sessions", "show", sid))
    assert shown["session"] == sid
    assert shown["tool"] == "show-tool 3.1"
    assert shown["status"] == "live"
    assert shown["owner"].startswith(f"pid {owner.pid} ")
    assert shown["workspace"] == "/ws"
    assert json.loads(shown["metadata"]) == {"k": "v"}
    assert "ended" not in shown

    answer = ok_json("sessions", "show", sid)
    assert answer["session_id"] == sid
    assert answer["owner_pid"] == owner.pid
    assert answer["metadata"] == {"k": "v"}
    assert answer["ended_at"] is None and answer["end_reason"] is None


@pytest.mark.parametrize(("session_id", "code"), [(str(uuid.uuid4()), "not_found"), ("not-a-uuid", "invalid")])
def test_sessions_show_an_unknown_session(daemon, session_id, code):
    r = omnid_inproc("sessions", "show", session_id)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"omnid: {code}: ")

    r = omnid_inproc("sessions", "show", session_id, "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == code


def test_sessions_end(daemon, client, spawn_owner):
    first = start_session("end-tool", spawn_owner().pid)
    second = start_session("end-tool", spawn_owner().pid)

    assert ok("sessions", "end", first, second).splitlines() == [f"{first} ended", f"{second} ended"]
    shown = fields(ok("sessions", "show", first))
    assert shown["status"] == "ended"
    assert "ended" in shown
    assert ok_json("sessions", "show", second)["end_reason"] == "ended"
    assert client.status().live_sessions == 0

    # Ending again changes nothing and is no error.
    [again] = ok_json("sessions", "end", first)
    assert again["end_reason"] == "ended"
    assert again["ended_at"] == iso(client.get(first).ended_at, "microseconds")


def test_sessions_end_an_unknown_session(daemon):
    r = omnid_inproc("sessions", "end", str(uuid.uuid4()))
    assert r.returncode == 1
    assert "not_found" in r.stderr


def test_sessions_end_keeps_a_reaped_session_reaped(daemon, client, spawn_owner):
    owner = spawn_owner()
    sid = start_session("reaped-tool", owner.pid)
    owner.kill()
    owner.wait()
    wait_for(lambda: client.get(sid).end_reason == "reaped", what="the session to be reaped")
    assert ok("sessions", "end", sid).strip() == f"{sid} reaped"
    assert fields(ok("sessions", "show", sid))["status"] == "reaped"


# --- reap ---------------------------------------------------------------------------


REAP_LINE = re.compile(r"^(would reap|reaped) (\d+) session\(s\)$")
REAP_HEADER = re.compile(r"^SESSION +TOOL +PID +CAUSE$")


def test_reap_leaves_sessions_of_live_owners_alone(daemon, client, spawn_owner):
    sid = start_session("alive-tool", spawn_owner().pid)
    assert ok("reap", "--dry-run").splitlines() == ["would reap 0 session(s)"]
    assert ok("reap").splitlines() == ["reaped 0 session(s)"]
    answer = ok_json("reap")
    assert answer["dry_run"] is False and answer["sessions"] == []
    assert client.get(sid).live
    assert ok_json("status")["last_reap"]["trigger"] == "manual"


def test_reap_after_the_owner_is_killed(daemon, client, spawn_owner):
    owner = spawn_owner()
    sid = start_session("killed-tool", owner.pid)
    owner.kill()
    owner.wait()

    # The daemon usually reaps the session by itself within moments (pidfd); a manual
    # reap either finds it or finds it already done. Either way it ends reaped.
    out = ok("reap").splitlines()
    m = REAP_LINE.match(out[0])
    assert m and m.group(1) == "reaped", out
    if int(m.group(2)):
        assert REAP_HEADER.match(out[1])
        assert out[2].split()[:3] == [sid, "killed-tool", str(owner.pid)]
    else:
        assert len(out) == 1
    wait_for(lambda: client.get(sid).end_reason == "reaped", what="the session to be reaped")
    assert fields(ok("sessions", "show", sid))["status"] == "reaped"


def test_reap_finds_a_session_whose_owner_died_unwatched(daemon, client, home):
    # A session the daemon does not watch, as one left by a crash would be: written
    # straight into the daemon's database with the identity of a process that has exited.
    proc = subprocess.Popen(["sleep", "600"])
    identity = inspect(proc.pid).identity
    proc.kill()
    proc.wait()
    sid = str(uuid.uuid4())
    db = sqlite3.connect(home / "omnid.db", timeout=10, isolation_level=None)
    try:
        db.execute(
            "INSERT INTO sessions (session_id, tool_id, session_type, owner_pid, owner_start, boot_id, "
            "started_at, last_activity) VALUES (?, 'ghost-tool', 'default', ?, ?, ?, 1000, 1000)",
            (sid, identity.pid, identity.start, boot_id()),
        )
    finally:
        db.close()

    out = ok("reap", "--dry-run").splitlines()
    assert out[0] == "would reap 1 session(s)"
    assert REAP_HEADER.match(out[1])
    assert re.fullmatch(rf"{sid} +ghost-tool +{identity.pid} +process exited", out[2])
    assert client.get(sid).live, "a dry run ends nothing"

    answer = ok_json("reap")
    assert answer["dry_run"] is False
    assert answer["sessions"] == [
        {"session_id": sid, "tool_id": "ghost-tool", "owner_pid": identity.pid, "cause": "process exited"}
    ]
    assert client.get(sid).end_reason == "reaped"
    assert ok("reap").splitlines() == ["reaped 0 session(s)"]


# --- stop and autostart ----------------------------------------------------------------


def test_stop_stops_the_daemon(daemon):
    assert ok("stop", run=omnid_process).strip() == f"omnid (pid {daemon.pid}) is stopping"
    assert daemon.proc.wait(timeout=10) == 0
    assert omnid_process("status").returncode == NOT_RUNNING


def test_stop_without_a_daemon_starts_none(no_daemon):
    r = omnid_process("stop")
    assert r.returncode == NOT_RUNNING
    assert "not running" in r.stderr


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (["reap"], 0, "reaped 0 session(s)\n"),
        (["session", "start", "--tool", "t", "--pid", str(os.getpid())], 0, None),
    ],
    ids=["reap", "session-start"],
)
def test_commands_that_write_start_a_daemon_when_none_runs(home, args, status, expected):
    """(Read-only commands never do: tests/cli/test_ops_cli.py.)"""
    assert omnid_inproc("status").returncode == NOT_RUNNING
    r = omnid_process(*args)
    try:
        assert (r.returncode, r.stdout if expected is not None else None) == (status, expected), r.stderr
        answer = ok_json("status")
        assert answer["running"] is True
        assert answer["socket"] == str(home / "run" / "omnid.sock")
    finally:
        if omnid_inproc("status").returncode == 0:
            stop_and_wait()
    log = (home / "omnid.log").read_text()
    assert "Traceback" not in log, log


# --- version and help --------------------------------------------------------------


def test_version():
    assert ok("--version", run=omnid_process).strip() == f"omnid, version {omnid.__version__}"


def test_the_entry_point_runs_the_cli():
    r = omnid_process("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("Usage: ") and "sessions" in r.stdout
    r = omnid_process("no-such-command")
    assert r.returncode == 2
    assert "No such command" in r.stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--help"], ["status", "stop", "reap", "serve", "session", "sessions"]),
        (["-h"], ["status", "stop", "reap", "serve", "session", "sessions"]),
        (["sessions", "--help"], ["list", "show", "end"]),
        (["session", "--help"], ["start", "find"]),
    ],
    ids=["--help", "-h", "sessions", "session"],
)
def test_help(args, names):
    out = ok(*args)
    assert out.startswith("Usage: ")
    commands = re.findall(r"^  (\S+)", out.split("Commands:")[1], re.MULTILINE)
    assert set(names) <= set(commands), commands
