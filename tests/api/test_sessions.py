"""Sessions end to end: a real daemon, real sockets, real SQLite and real owner processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from omnid_client import (
    AsyncClient,
    Client,
    Conflict,
    Invalid,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unavailable,
    Unsupported,
)
from omnid_client._core import Call
from omnid_client.protocol import MAX_METADATA_BYTES, METHODS, Session
from tests.helpers import DaemonProcess, db_rows, omnid_json, process_state, start_ticks, wait_for

PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
NOBODY = 65534
REAP_BOUND = 1.0
"""The one functional time bound: a dead owner's session is reaped within this many seconds."""


# --- helpers ---------------------------------------------------------------------------


def raw_call(client: Client, method: str, params: dict[str, Any]) -> Any:
    """Send ``params`` as they are (no client-side typing) to ``method``, even an unknown one."""
    call = Call(method if method in METHODS else "daemon.status", params)
    call.method = method
    return client._call(call)


def assert_connection_kept(client: Client, sock) -> None:
    """The daemon still answers on the very connection that got the error."""
    assert client.status().pid > 0
    assert client._sock is sock, "the daemon closed the connection after an error reply"


def connection_of(client: Client):
    """Connect now; the socket, to check later that errors did not cost the connection."""
    client.connect()
    return client._sock


def reaped(client: Client, session_id: str) -> Session | None:
    session = client.get(session_id)
    return session if session.end_reason == "reaped" else None


def ticks_since_boot() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def has_sub_ms_part(ts: float) -> bool:
    frac = (ts * 1000.0) % 1.0
    return 0.001 < frac < 0.999


# --- the nine scenarios of the deduplication report -------------------------------------


def test_create_with_pid_binds_the_session_to_that_process(client, spawn_owner):
    owner = spawn_owner()
    got = client.get_or_create("claude-code", pid=owner.pid)
    assert got.status == "created"
    s = got.session
    assert s.owner_pid == owner.pid
    assert s.owner_start == start_ticks(owner.pid), "the start ticks the kernel records for it"
    assert s.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert s.tool_id == "claude-code" and s.live and s.end_reason is None
    assert client.get(s.session_id) == s


def test_same_tool_and_pid_reuses_the_session(client, spawn_owner):
    owner = spawn_owner()
    first = client.get_or_create("claude-code", pid=owner.pid)
    second = client.get_or_create("claude-code", pid=owner.pid)
    assert second.status == "existing"
    assert second.session.session_id == first.session.session_id
    assert second.session.last_activity > first.session.last_activity


def test_a_reused_session_reflects_every_change_made_since(client, daemon, spawn_owner):
    """Reuse and get answers come from a cache between writes: each kind of write must show."""
    owner = spawn_owner()
    sid = client.get_or_create("claude-code", pid=owner.pid).session.session_id
    for _ in range(3):  # the later ones are served without SQL
        assert client.get_or_create("claude-code", pid=owner.pid).session.message_count == 0
        assert client.get(sid).message_count == 0
    client.add_message(sid, "user", "hello", tokens_used=7)
    again = client.get_or_create("claude-code", pid=owner.pid).session
    assert (again.session_id, again.message_count, again.total_tokens) == (sid, 1, 7)
    assert client.find("claude-code", pid=owner.pid).message_count == 1
    assert client.get(sid).message_count == 1
    client.update_session(sid, title="renamed")
    assert client.get(sid).title == "renamed"
    beat = client.heartbeat(sid).last_activity
    assert client.get(sid).last_activity == beat

    with daemon.client() as other:  # ended by someone else
        other.end(sid)
    assert client.get(sid).end_reason == "ended"
    assert client.find("claude-code", pid=owner.pid) is None
    fresh = client.get_or_create("claude-code", pid=owner.pid)
    assert fresh.status == "created" and fresh.session.session_id != sid

    client.get_or_create("claude-code", pid=owner.pid)
    assert client.find("claude-code", pid=owner.pid).session_id == fresh.session.session_id
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    wait_for(lambda: reaped(client, fresh.session.session_id), timeout=10, what="the session to be reaped")
    assert client.find("claude-code", pid=owner.pid) is None


def test_different_pids_get_different_sessions(client, spawn_owner):
    a, b = spawn_owner(), spawn_owner()
    sa = client.get_or_create("claude-code", pid=a.pid)
    sb = client.get_or_create("claude-code", pid=b.pid)
    assert (sa.status, sb.status) == ("created", "created")
    assert sa.session.session_id != sb.session.session_id
    assert (sa.session.owner_pid, sb.session.owner_pid) == (a.pid, b.pid)


def test_find_only_returns_live_sessions(client, spawn_owner):
    owner = spawn_owner()
    sid = client.get_or_create("claude-code", pid=owner.pid).session.session_id
    assert client.find("claude-code", pid=owner.pid).session_id == sid
    client.end(sid)
    assert client.find("claude-code", pid=owner.pid) is None


def test_an_ended_session_allows_a_new_one(client, spawn_owner):
    owner = spawn_owner()
    old = client.get_or_create("claude-code", pid=owner.pid).session
    client.end(old.session_id)
    new = client.get_or_create("claude-code", pid=owner.pid)
    assert new.status == "created"
    assert new.session.session_id != old.session_id
    assert client.find("claude-code", pid=owner.pid).session_id == new.session.session_id


def test_without_pid_the_owner_is_the_calling_process(client):
    got = client.get_or_create("claude-code")
    assert got.status == "created"
    assert got.session.owner_pid == os.getpid()
    assert client.find("claude-code").session_id == got.session.session_id
    assert client.find("claude-code", pid=os.getpid()).session_id == got.session.session_id


def test_without_dedup_two_sessions_live_side_by_side(client, spawn_owner):
    owner = spawn_owner()
    a = client.get_or_create("claude-code", pid=owner.pid, dedup=False)
    b = client.get_or_create("claude-code", pid=owner.pid, dedup=False)
    assert (a.status, b.status) == ("created", "created")
    assert a.session.session_id != b.session.session_id
    assert client.get(a.session.session_id).live and client.get(b.session.session_id).live


def test_heartbeat_moves_last_activity(client, spawn_owner):
    owner = spawn_owner()
    s = client.get_or_create("claude-code", pid=owner.pid).session
    beat = client.heartbeat(s.session_id)
    assert beat.last_activity > s.last_activity
    assert beat.started_at == s.started_at
    assert client.get(s.session_id).last_activity == beat.last_activity


def test_different_tools_on_one_pid_get_separate_sessions(client, spawn_owner):
    owner = spawn_owner()
    a = client.get_or_create("claude-code", pid=owner.pid)
    b = client.get_or_create("codex", pid=owner.pid)
    assert (a.status, b.status) == ("created", "created")
    assert a.session.session_id != b.session.session_id
    assert client.find("claude-code", pid=owner.pid).session_id == a.session.session_id
    assert client.find("codex", pid=owner.pid).session_id == b.session.session_id


# --- one key, many racing processes ---------------------------------------------------------

RACER = r"""
import json, os, sys, threading
from pathlib import Path
from omnid_client import Client

tool, owner, ready, gun, calls = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# Each call on a connection of its own; generous timeouts: the promise is one session, not speed.
clients = [Client(autostart=False, timeout=120, connect_timeout=120) for _ in range(calls)]
for client in clients:
    client.connect()
results = []

def race(client):
    os.read(gun, 1)  # blocks until the test closes the other end: every call starts at once
    got = client.get_or_create(tool, pid=owner)
    results.append({"status": got.status, "session_id": got.session.session_id})

threads = [threading.Thread(target=race, args=(client,)) for client in clients]
for thread in threads:
    thread.start()
ready.touch()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""
RACERS, CALLS = 20, 5
"""100 calls at once, from 20 processes: a process start costs more CPU than the daemon
spends on all its calls, and on a loaded machine 100 of them took over the deadline."""


def racer_results(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().splitlines()[-1])


def test_racing_processes_get_exactly_one_session(client, spawn_owner, tmp_path):
    owner = spawn_owner()
    gun_r, gun_w = os.pipe()
    procs: list[subprocess.Popen] = []
    try:
        try:
            for i in range(RACERS):
                args = ["racer", str(owner.pid), str(tmp_path / f"ready-{i}"), str(gun_r), str(CALLS)]
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", RACER, *args],
                        pass_fds=(gun_r,),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env=os.environ.copy(),
                    )
                )
            # Only a guard against a hang: it ends as soon as every racer is connected.
            wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == RACERS, timeout=180, what="racers to connect")
            assert client.status().connections >= RACERS * CALLS, "every call has its connection open"
        finally:
            os.close(gun_r)
            os.close(gun_w)  # the starting gun: every racer's read returns now
        results = [r for proc in procs for r in racer_results(proc)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert len(results) == RACERS * CALLS
    assert len({r["session_id"] for r in results}) == 1
    assert Counter(r["status"] for r in results) == {"created": 1, "existing": RACERS * CALLS - 1}
    sessions = client.list_sessions(tool_id="racer").sessions
    assert [s.session_id for s in sessions] == [results[0]["session_id"]]


# --- reaping ------------------------------------------------------------------------------


@pytest.mark.parametrize("wait_for_child", [True, False], ids=["exited", "zombie"])
def test_a_killed_owner_is_reaped_within_a_second(client, spawn_owner, wait_for_child):
    owner = spawn_owner()
    sid = client.get_or_create("claude-code", pid=owner.pid).session.session_id
    os.kill(owner.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    if wait_for_child:
        owner.wait()
    session = wait_for(lambda: reaped(client, sid), timeout=10, interval=0.005, what="the session to be reaped")
    elapsed = time.monotonic() - killed_at
    assert elapsed <= REAP_BOUND, f"reaped {elapsed:.3f}s after the kill"
    assert session.ended_at is not None and not session.live
    assert client.find("claude-code", pid=owner.pid) is None
    if not wait_for_child:
        assert process_state(owner.pid) == "Z", "the owner should still be an unwaited zombie"


def test_sessions_are_never_reaped_while_the_owner_lives(client, spawn_owner):
    owner = spawn_owner()
    ids = [
        client.get_or_create("claude-code", pid=owner.pid).session.session_id,
        client.get_or_create("codex").session.session_id,  # owned by this test process
    ]
    dry = client.reap(dry_run=True)
    assert dry.dry_run is True and dry.sessions == []
    real = client.reap()
    assert real.dry_run is False and real.sessions == []
    assert all(client.get(sid).live for sid in ids)
    assert client.status().live_sessions == 2


def test_a_reused_pid_gets_a_new_session(client, spawn_owner):
    try:
        NS_LAST_PID.write_text(NS_LAST_PID.read_text())
    except OSError as e:
        pytest.skip(f"cannot steer pid allocation: {e}")
    a = spawn_owner()
    old = client.get_or_create("claude-code", pid=a.pid).session
    a.kill()
    a.wait()
    # Start times have clock-tick (10 ms) resolution: let A's tick pass so B's start differs.
    wait_for(lambda: ticks_since_boot() > old.owner_start + 1, what="a clock tick to pass")
    for _ in range(50):
        NS_LAST_PID.write_text(str(a.pid - 1))
        b = spawn_owner()
        if b.pid == a.pid:
            break
        b.kill()
        b.wait()
    else:
        pytest.fail(f"could not get pid {a.pid} reused")

    new = client.get_or_create("claude-code", pid=b.pid)
    assert new.status == "created"
    assert new.session.session_id != old.session_id
    assert new.session.owner_pid == a.pid
    assert new.session.owner_start != old.owner_start
    assert client.find("claude-code", pid=b.pid).session_id == new.session.session_id
    wait_for(lambda: reaped(client, old.session_id), what="the old session to be reaped")


def _pidfd_inodes() -> str | None:
    """Why this kernel gives no unique pidfd inodes, or None if it does."""
    from omnid.identity import pidfd_inodes_unique

    if not hasattr(os, "pidfd_open"):
        return "no pidfd_open on this platform"
    if not pidfd_inodes_unique():
        return f"kernel {os.uname().release} shares one pidfd inode between processes (pidfs needs Linux 6.9+)"
    return None


@pytest.mark.skipif(_pidfd_inodes() is not None, reason=_pidfd_inodes() or "")
def test_a_pid_reused_within_one_start_tick_while_omnid_was_down_does_not_inherit_the_session(home, spawn_owner):
    """Two processes with the same pid and the same start tick (10 ms) look alike to
    /proc; their pidfd inodes do not. A session recorded with another process's inode is
    that process's, and ends at restart, while an unchanged one, or one from before
    inodes were recorded (NULL), stays live."""
    a, b, c = spawn_owner(), spawn_owner(), spawn_owner()
    d = DaemonProcess(home).start()
    try:
        with Client(autostart=False) as client:
            ids = [client.get_or_create("t", pid=p.pid).session.session_id for p in (a, b, c)]
    finally:
        assert d.stop() == 0
    db = home / "omnid.db"
    recorded = dict(db_rows(db, "SELECT owner_pid, owner_ino FROM sessions"))
    for p in (a, b, c):
        fd = os.pidfd_open(p.pid)
        try:
            assert recorded[p.pid] == os.fstat(fd).st_ino, "the owner's pidfd inode is recorded"
        finally:
            os.close(fd)
    # While omnid was down, A's pid and start tick went to another process: as recorded,
    # the session's owner is now a process with another inode. C's row predates inodes.
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sessions SET owner_ino = owner_ino + 1000000 WHERE session_id = ?", (ids[0],))
        conn.execute("UPDATE sessions SET owner_ino = NULL WHERE session_id = ?", (ids[2],))

    d = DaemonProcess(home).start()
    try:
        with Client(autostart=False) as client:
            assert client.get(ids[0]).end_reason == "reaped", "A's pid now belongs to another process"
            assert client.get(ids[1]).live and client.get(ids[2]).live
            again = client.get_or_create("t", pid=a.pid)
            assert again.status == "created" and again.session.session_id != ids[0]
            assert client.get_or_create("t", pid=b.pid).session.session_id == ids[1]
    finally:
        assert d.stop() == 0
    assert "startup sweep reaped 1 session(s)" in d.log_text()


# --- typed errors ---------------------------------------------------------------------------


def _exited_pid(spawn_owner) -> int:
    proc = spawn_owner()
    proc.kill()
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    "make_pid, error",
    [
        (lambda spawn: 0, Invalid),
        (lambda spawn: -1, Invalid),
        (lambda spawn: PID_MAX + 1, Invalid),
        (lambda spawn: 2**31, Invalid),
        (_exited_pid, NotFound),
        (lambda spawn: spawn(user=NOBODY).pid, PermissionDenied),
    ],
    ids=["zero", "negative", "above-pid_max", "2**31", "exited", "other-user"],
)
def test_unusable_pids_get_typed_errors(client, spawn_owner, make_pid, error):
    pid = make_pid(spawn_owner)
    sock = connection_of(client)
    with pytest.raises(error) as exc:
        client.get_or_create("claude-code", pid=pid)
    assert exc.value.details.get("field") == "pid"
    assert str(pid) in str(exc.value)
    assert_connection_kept(client, sock)
    assert client.get_or_create("claude-code").status == "created"
    assert client.status().live_sessions == 1


def kernel_thread_pid() -> int:
    """A kernel thread other than kthreadd: a child of pid 2."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != "2":
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_bytes()
                if stat[stat.rindex(b")") + 2 :].split()[1] == b"2":
                    return int(entry.name)
    pytest.skip("no kernel thread is visible in this pid namespace")


@pytest.mark.parametrize(
    "make_pid, error, why",
    [
        (lambda daemon: 1, PermissionDenied, "init process"),
        (lambda daemon: 2 if Path("/proc/2").exists() else pytest.skip("no kthreadd here"), PermissionDenied,
         "kernel thread"),
        (lambda daemon: kernel_thread_pid(), PermissionDenied, "kernel thread"),
        (lambda daemon: daemon.pid, Invalid, "omnid daemon itself"),
    ],
    ids=["init", "kthreadd", "kernel-thread", "the-daemon"],
)
def test_processes_that_never_exit_or_are_omnid_cannot_own_a_session(daemon, client, make_pid, error, why):
    """Root may inspect every process, so only these checks stop a session from being
    bound to one that never exits (it would never be reaped) or to the daemon itself."""
    pid = make_pid(daemon)
    sock = connection_of(client)
    for call in (client.get_or_create, client.find):
        with pytest.raises(error) as exc:
            call("claude-code", pid=pid)
        assert why in str(exc.value) and str(pid) in str(exc.value)
        assert exc.value.details.get("field") == "pid"
    assert_connection_kept(client, sock)
    assert client.status().live_sessions == 0


@pytest.mark.parametrize(
    "method, params, field",
    [
        ("session.get_or_create", {"tool_id": ""}, "tool_id"),
        ("session.get_or_create", {"tool_id": "my tool"}, "tool_id"),
        ("session.get_or_create", {"tool_id": "///"}, "tool_id"),
        ("session.get_or_create", {"tool_id": "t" * 200}, "tool_id"),
        ("session.get_or_create", {"tool_id": 42}, "tool_id"),
        ("session.get_or_create", {}, "tool_id"),
        ("session.get_or_create", {"tool_id": "x", "pid": "abc"}, "pid"),
        ("session.get_or_create", {"tool_id": "x", "pid": 1.5}, "pid"),
        ("session.get_or_create", {"tool_id": "x", "pid": True}, "pid"),
        ("session.get_or_create", {"tool_id": "x", "dedup": "yes"}, "dedup"),
        ("session.get_or_create", {"tool_id": "x", "metadata": [1, 2]}, "metadata"),
        ("session.get_or_create", {"tool_id": "x", "session_type": ""}, "session_type"),
        ("session.get_or_create", {"tool_id": "x", "workspace": ""}, "workspace"),
        ("session.find", {"tool_id": "x", "pid": "abc"}, "pid"),
        ("session.list", {"limit": 0}, "limit"),
        ("session.list", {"status": "zombie"}, "status"),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_parameters_are_invalid_and_named(client, method, params, field):
    sock = connection_of(client)
    with pytest.raises(Invalid) as exc:
        raw_call(client, method, params)
    assert field in str(exc.value)
    assert_connection_kept(client, sock)


@pytest.mark.parametrize("method", ["get", "end", "heartbeat"])
@pytest.mark.parametrize("session_id", ["", "not-a-uuid", "0b5e7c3a-6f0e-4c1e-9a59-7d3c2b1a0f9e0"])
def test_malformed_session_ids_are_invalid(client, method, session_id):
    sock = connection_of(client)
    with pytest.raises(Invalid) as exc:
        getattr(client, method)(session_id)
    assert "session_id" in str(exc.value)
    assert_connection_kept(client, sock)


def test_oversize_metadata_is_too_large(client):
    sock = connection_of(client)
    with pytest.raises(TooLarge) as exc:
        client.get_or_create("claude-code", metadata={"blob": "x" * (MAX_METADATA_BYTES + 1)})
    assert "metadata" in str(exc.value)
    assert client.find("claude-code") is None
    assert_connection_kept(client, sock)
    fits = {"blob": "x" * (MAX_METADATA_BYTES - 100)}
    assert client.get_or_create("claude-code", metadata=fits).session.metadata == fits


def test_unknown_method_is_unsupported(client):
    sock = connection_of(client)
    with pytest.raises(Unsupported) as exc:
        raw_call(client, "session.teleport", {"session_id": str(uuid.uuid4())})
    assert "session.teleport" in str(exc.value)
    assert_connection_kept(client, sock)


def test_heartbeat_on_an_ended_session_is_a_conflict(client):
    sid = client.get_or_create("claude-code").session.session_id
    client.end(sid)
    with pytest.raises(Conflict) as exc:
        client.heartbeat(sid)
    assert exc.value.details["session_id"] == sid
    assert client.get(sid).end_reason == "ended"


@pytest.mark.parametrize("method", ["get", "end", "heartbeat"])
def test_unknown_session_id_is_not_found(client, method):
    unknown = str(uuid.uuid4())
    client.get_or_create("claude-code")
    with pytest.raises(NotFound) as exc:
        getattr(client, method)(unknown)
    assert unknown in str(exc.value)


def test_end_is_idempotent(client):
    sid = client.get_or_create("claude-code").session.session_id
    first = client.end(sid)
    second = client.end(sid)
    assert first.ended_at is not None and first.end_reason == "ended"
    assert second == first


# --- listing --------------------------------------------------------------------------------

LISTED = [
    # (tool_id, session_type, workspace, ended)
    ("alpha", "default", "/w/one", False),
    ("beta", "default", "/w/one", True),
    ("alpha", "review", "/w/two", False),
    ("beta", "review", "/w/two", False),
    ("alpha", "default", "/w/two", True),
    ("alpha", "review", "/w/one", False),
]


def matches(s: Session, tool_id=None, session_type=None, status="all", workspace=None) -> bool:
    return (
        tool_id in (None, s.tool_id)
        and session_type in (None, s.session_type)
        and workspace in (None, s.workspace)
        and (status == "all" or (status == "live") == s.live)
    )


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"tool_id": "alpha"},
        {"tool_id": "gamma"},
        {"session_type": "review"},
        {"status": "live"},
        {"status": "ended"},
        {"workspace": "/w/two"},
        {"tool_id": "alpha", "status": "live", "workspace": "/w/one"},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "none",
)
def test_list_filters_newest_first(client, filters):
    for tool, stype, workspace, ended in LISTED:
        sid = client.get_or_create(tool, session_type=stype, workspace=workspace, dedup=False).session.session_id
        if ended:
            client.end(sid)
    everything = client.list_sessions().sessions
    assert len(everything) == len(LISTED)
    assert [s.started_at for s in everything] == sorted((s.started_at for s in everything), reverse=True)
    assert [(s.tool_id, s.session_type, s.workspace, not s.live) for s in everything] == LISTED[::-1]

    page = client.list_sessions(**filters)
    assert [s.session_id for s in page.sessions] == [s.session_id for s in everything if matches(s, **filters)]
    assert page.next_cursor is None


def test_list_by_project_pages_through_that_projects_sessions_only(client, home, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    mine = []
    for i in range(7):
        mine.append(client.get_or_create("lister", workspace=str(one), dedup=False).session)
        client.get_or_create("lister", workspace=str(two), dedup=False)
        if i % 2:
            client.end(mine[-1].session_id)
    project_id = mine[0].project_id
    assert project_id is not None and {s.project_id for s in mine} == {project_id}
    seen, cursor = [], None
    while True:
        page = client.list_sessions(project_id=project_id, limit=3, cursor=cursor)
        seen += page.sessions
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [s.session_id for s in seen] == [s.session_id for s in reversed(mine)]
    ended = client.list_sessions(project_id=project_id, status="ended").sessions
    assert [s.session_id for s in ended] == [s.session_id for s in reversed(mine) if s.session_id in
                                             {m.session_id for i, m in enumerate(mine) if i % 2}]
    assert client.list_sessions(project_id="prj_000000000000").sessions == []
    cli = omnid_json("sessions", "list", "--project", project_id, "--limit", "1000")
    assert [s["session_id"] for s in cli["sessions"]] == [s.session_id for s in reversed(mine)]
    plan = db_rows(
        home / "omnid.db",
        "EXPLAIN QUERY PLAN SELECT session_id FROM sessions WHERE project_id = ? "
        "ORDER BY started_at DESC, session_id DESC LIMIT 3", project_id,
    )
    assert any("sessions_project" in row[-1] for row in plan) and not any("TEMP B-TREE" in row[-1] for row in plan)
    with pytest.raises(Invalid):
        client.list_sessions(project_id="not-a-project-id")


@pytest.mark.parametrize("count, limit", [(23, 5), (20, 5), (3, 50), (4, 1)])
def test_list_pages_walk_every_session_once(client, count, limit):
    created = [client.get_or_create("pager", dedup=False).session.session_id for _ in range(count)]
    client.get_or_create("noise")
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        page = client.list_sessions(tool_id="pager", limit=limit, cursor=cursor)
        pages += 1
        assert len(page.sessions) <= limit
        seen += [s.session_id for s in page.sessions]
        cursor = page.next_cursor
        if cursor is None:
            break
        assert pages <= count, "pagination does not terminate"
    assert seen == created[::-1]
    assert pages == -(-count // limit)


@pytest.mark.parametrize("cursor", ["garbage", "bm8tc2VwYXJhdG9y", "bm90YWZsb2F0fGFiYw==", "__79"])
def test_a_garbage_cursor_is_invalid(client, cursor):
    client.get_or_create("pager")
    sock = connection_of(client)
    with pytest.raises(Invalid) as exc:
        client.list_sessions(cursor=cursor)
    assert "cursor" in str(exc.value)
    assert_connection_kept(client, sock)


# --- what a session records -------------------------------------------------------------------


def test_workspace_defaults_to_the_owners_cwd(client, spawn_owner, tmp_path):
    with contextlib.chdir(tmp_path):  # the owner inherits it
        owner = spawn_owner()
    assert os.getcwd() != str(tmp_path)
    s = client.get_or_create("claude-code", pid=owner.pid).session
    assert s.workspace == os.path.realpath(tmp_path)
    assert client.get_or_create("codex").session.workspace == os.path.realpath(os.getcwd())


def test_an_explicit_workspace_is_kept(client, spawn_owner):
    owner = spawn_owner()
    s = client.get_or_create("claude-code", pid=owner.pid, workspace="/srv/project one").session
    assert s.workspace == "/srv/project one"
    assert client.get(s.session_id).workspace == "/srv/project one"


def test_metadata_round_trips(client):
    metadata = {
        "model": "opus",
        "nested": {"list": [1, 2.5, "three", None, True, {"deep": {"er": []}}], "empty": {}},
        "unicode": "grüße → 世界",
        "big": 2**53,
    }
    s = client.get_or_create("claude-code", metadata=metadata, tool_version="1.2.3").session
    assert s.metadata == metadata
    stored = client.get(s.session_id)
    assert stored.metadata == metadata
    assert stored.tool_version == "1.2.3"
    assert client.find("claude-code").metadata == metadata


@pytest.fixture
def far_tz_daemon(monkeypatch, home, request):
    """A daemon whose local time is far from UTC, so local-time stamps would stand out."""
    monkeypatch.setenv("TZ", "XXX-5:45")
    return request.getfixturevalue("daemon")


def test_timestamps_are_precise_utc_epoch_floats(far_tz_daemon):
    with far_tz_daemon.client() as client:
        before = time.time()
        ids = [client.get_or_create("clock", dedup=False).session.session_id for _ in range(12)]
        for sid in ids:
            client.heartbeat(sid)
            client.end(sid)
        after = time.time()
        sessions = [client.get(sid) for sid in ids]
    for field in ("started_at", "last_activity", "ended_at"):
        values = [getattr(s, field) for s in sessions]
        assert all(type(v) is float for v in values), field
        assert all(before - 1.0 <= v <= after + 1.0 for v in values), (field, before, values, after)
        assert any(has_sub_ms_part(v) for v in values), f"{field} is not finer than a millisecond: {values}"
    starts = [s.started_at for s in sessions]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(s.started_at < s.ended_at for s in sessions)


# --- AsyncClient ------------------------------------------------------------------------------


def test_async_client_calls(daemon, spawn_owner):
    owner = spawn_owner()

    async def scenario():
        async with AsyncClient(autostart=False) as ac:
            created = await ac.get_or_create("claude-code", pid=owner.pid, metadata={"k": [1]})
            again = await ac.get_or_create("claude-code", pid=owner.pid)
            found = await ac.find("claude-code", pid=owner.pid)
            beat = await ac.heartbeat(created.session.session_id)
            listed = await ac.list_sessions(tool_id="claude-code", status="live")
            ended = await ac.end(created.session.session_id)
            after = await ac.find("claude-code", pid=owner.pid)
            with pytest.raises(NotFound):
                await ac.get(str(uuid.uuid4()))
            with pytest.raises(Invalid):
                await ac.get_or_create("bad tool")
            return created, again, found, beat, listed, ended, after

    created, again, found, beat, listed, ended, after = asyncio.run(scenario())
    sid = created.session.session_id
    assert (created.status, again.status) == ("created", "existing")
    assert again.session.session_id == found.session_id == sid
    assert created.session.owner_pid == owner.pid and created.session.metadata == {"k": [1]}
    assert beat.last_activity > created.session.last_activity
    assert [s.session_id for s in listed.sessions] == [sid]
    assert ended.end_reason == "ended" and after is None


def test_async_concurrent_get_or_create_makes_one_session(daemon, spawn_owner):
    owner = spawn_owner()

    async def scenario():
        async with AsyncClient(autostart=False) as ac:
            return await asyncio.gather(*(ac.get_or_create("racer", pid=owner.pid) for _ in range(50)))

    results = asyncio.run(scenario())
    assert len({r.session.session_id for r in results}) == 1
    assert Counter(r.status for r in results) == {"created": 1, "existing": 49}


@pytest.mark.parametrize("raises", [False, True], ids=["clean-exit", "block-raises"])
def test_async_session_context_ends_the_session(client, raises):
    async def scenario():
        async with AsyncClient(autostart=False) as ac:
            with contextlib.suppress(RuntimeError):
                async with ac.session("claude-code") as s:
                    assert (await ac.get(s.session_id)).live
                    if raises:
                        raise RuntimeError("boom")
            return s

    s = asyncio.run(scenario())
    assert client.get(s.session_id).end_reason == "ended"
    assert client.find("claude-code") is None


@pytest.mark.parametrize("raises", [False, True], ids=["clean-exit", "block-raises"])
def test_session_context_ends_the_session(client, raises):
    with contextlib.suppress(RuntimeError), client.session("claude-code", metadata={"a": 1}) as s:
        assert client.get(s.session_id).live
        if raises:
            raise RuntimeError("boom")
    assert client.get(s.session_id).end_reason == "ended"
    assert client.find("claude-code") is None


# --- fail-open, fork ---------------------------------------------------------------------------


def call_once(kind: str, method: str, **client_kwargs) -> Any:
    if kind == "sync":
        with Client(**client_kwargs) as c:
            return getattr(c, method)("claude-code")

    async def go():
        async with AsyncClient(**client_kwargs) as c:
            return await getattr(c, method)("claude-code")

    return asyncio.run(go())


@pytest.mark.parametrize("method", ["get_or_create", "find"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fail_open_returns_none_without_a_daemon(home, kind, method):
    missing = home / "missing.sock"
    assert call_once(kind, method, socket_path=missing, autostart=False, fail_open=True) is None
    with pytest.raises(Unavailable):
        call_once(kind, method, socket_path=missing, autostart=False)
    assert not missing.exists()


def test_a_client_made_before_fork_works_in_the_child(client):
    parent = client.get_or_create("forked").session
    sock = client._sock
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe and never return into pytest
        code, report = 1, {}
        try:
            got = client.get_or_create("forked")
            report = {"status": got.status, "session_id": got.session.session_id, "owner_pid": got.session.owner_pid}
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            report = {"error": repr(e)}
        finally:
            with contextlib.suppress(BaseException):
                os.write(w, json.dumps(report).encode())
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        answered = bool(select.select([pipe], [], [], 20)[0])
        if not answered:
            os.kill(pid, signal.SIGKILL)
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert answered, "the child did not answer"
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report == {"status": "created", "session_id": report["session_id"], "owner_pid": pid}
    assert report["session_id"] != parent.session_id
    # The parent's own connection was left alone by the child.
    assert client.heartbeat(parent.session_id).live
    assert client._sock is sock


# --- activity from reuse is coalesced, never lost on a clean stop --------------------------


def stored_last_activity(home: Path, session_id: str) -> float:
    import sqlite3

    db = sqlite3.connect(f"file:{home / 'omnid.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT last_activity FROM sessions WHERE session_id = ?", (session_id,)).fetchone()[0]
    finally:
        db.close()


def test_reuse_activity_is_visible_at_once_and_stored_within_a_second(daemon, client, spawn_owner, home):
    owner = spawn_owner()
    created = client.get_or_create("coalesce", pid=owner.pid).session
    reused = client.get_or_create("coalesce", pid=owner.pid).session
    assert reused.last_activity > created.last_activity
    # Every read answers with the bump, even before it is committed.
    assert client.get(created.session_id).last_activity == reused.last_activity
    assert client.find("coalesce", pid=owner.pid).last_activity == reused.last_activity
    listed = client.list_sessions(tool_id="coalesce").sessions
    assert [s.last_activity for s in listed] == [reused.last_activity]
    wait_for(
        lambda: stored_last_activity(home, created.session_id) == reused.last_activity,
        timeout=10,
        what="the coalesced bump to be committed",
    )


def test_reuse_activity_pending_at_a_clean_stop_is_committed(daemon, client, spawn_owner, home):
    owner = spawn_owner()
    client.get_or_create("coalesce", pid=owner.pid)
    reused = client.get_or_create("coalesce", pid=owner.pid).session
    client.close()
    assert daemon.stop() == 0
    assert stored_last_activity(home, reused.session_id) == reused.last_activity
