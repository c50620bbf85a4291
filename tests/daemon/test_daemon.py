"""The daemon's lifecycle and its edges: single instance, crashes and restarts, graceful
stop, who may connect, private files, autostart, the wire protocol under abuse, status,
socket paths and databases it must refuse.

Everything here is real: daemon processes in a temp OMNID_HOME, Unix sockets, SQLite
files, owner processes, and forked children that drop to uid 65534 (``nobody``, ``as_user``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pytest

import omnid
from omnid.store.migrations import LATEST
from omnid_client import Client, OmnidError, Unavailable
from omnid_client._core import hello_frame, result_of
from omnid_client.protocol import MAX_FRAME, FindResult, GetOrCreateResult
from tests.helpers import (
    NOBODY,
    SERVE,
    DaemonProcess,
    Refusal,
    Wire,
    accepts,
    as_user,
    assert_serving,
    error_of,
    frame,
    gone,
    hello,
    mode,
    nested_arrays,
    omnid_daemons,
    request,
    unread_by_peer,
    wait_for,
)

# --- raw wire ----------------------------------------------------------------------














# --- daemons and processes -----------------------------------------------------------




@pytest.fixture(autouse=True)
def _no_stray_daemons(no_stray_daemons) -> None:
    """For every test here."""


# --- single instance -------------------------------------------------------------------


def test_second_daemon_refuses_to_start_and_first_keeps_serving(daemon, client):
    inode = os.stat(daemon.socket).st_ino

    second = subprocess.run(SERVE, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)

    assert second.returncode == 4, second.stderr  # EXIT_ALREADY_RUNNING: run by hand, not by a service manager
    assert "already running" in second.stderr
    assert f"pid {daemon.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert os.stat(daemon.socket).st_ino == inode, "the second daemon replaced the first one's socket"
    assert client.status().pid == daemon.pid
    assert_serving(daemon, other_clients=1)


# --- crashes and restarts ----------------------------------------------------------------


def test_restart_after_kill_9_replaces_the_stale_socket(daemon, start_daemon):
    daemon.kill()
    assert stat.S_ISSOCK(os.lstat(daemon.socket).st_mode), "kill -9 should leave the socket file behind"
    assert not accepts(daemon.socket)

    restarted = start_daemon()

    # (Not an inode comparison: the filesystem reuses the freed inode number at once.)
    assert "removed stale socket" in restarted.log_text()
    assert_serving(restarted)


def _crash_image(home: Path) -> Path:
    """A copy of the database as a crash left it (main file and WAL, not the shared-memory index)."""
    image = home / "crash-image"
    image.mkdir()
    for name in ("omnid.db", "omnid.db-wal"):
        if (home / name).exists():
            shutil.copy2(home / name, image / name)
    return image / "omnid.db"


def _integrity(db_path: Path) -> str:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def assert_acknowledged_sessions_survive(home: Path, session_ids: list[str], start_daemon) -> None:
    """After a kill -9: every acknowledged session is in the database as the crash left it,
    a restarted daemon serves each one still live, and the file passes an integrity check."""
    assert session_ids, "nothing was acknowledged before the kill"
    image = _crash_image(home)
    assert _integrity(image) == "ok"
    with contextlib.closing(sqlite3.connect(image)) as db:
        rows = dict(db.execute("SELECT session_id, ended_at FROM sessions"))
    missing = [sid for sid in session_ids if sid not in rows]
    assert not missing, f"{len(missing)} acknowledged session(s) lost in the crash, e.g. {missing[:3]}"
    assert all(rows[sid] is None for sid in session_ids)

    restarted = start_daemon()
    with restarted.client() as c:
        not_live = [sid for sid in session_ids if not c.get(sid).live]
    assert not not_live, f"{len(not_live)} session(s) of a live owner ended across the restart"
    assert restarted.stop() == 0
    assert _integrity(home / "omnid.db") == "ok"


def test_kill_9_loses_no_acknowledged_session(home, daemon, spawn_owner, start_daemon):
    owner = spawn_owner()
    with daemon.client() as c:
        acked = [c.get_or_create(f"crash-{i}", pid=owner.pid).session.session_id for i in range(200)]
    daemon.kill()

    assert len(set(acked)) == 200
    assert_acknowledged_sessions_survive(home, acked, start_daemon)


def test_kill_9_under_concurrent_writers_loses_no_acknowledged_session(home, daemon, spawn_owner, start_daemon):
    owner = spawn_owner()
    writers, cap = 4, 20_000
    acked: list[list[str]] = [[] for _ in range(writers)]
    stopped_by: list[BaseException | None] = [None] * writers

    def write(n: int) -> None:
        with daemon.client() as c:
            for i in range(cap):
                try:
                    got = c.get_or_create(f"writer{n}-{i}", pid=owner.pid)
                except OmnidError as e:
                    stopped_by[n] = e
                    return
                acked[n].append(got.session.session_id)

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(writers)]
    for t in threads:
        t.start()
    wait_for(lambda: all(len(a) >= 50 for a in acked), timeout=60, what="every writer to get replies")
    daemon.kill()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a writer hung after the daemon was killed"
    assert all(isinstance(e, Unavailable) for e in stopped_by), f"writers should stop on Unavailable: {stopped_by}"

    assert_acknowledged_sessions_survive(home, [sid for a in acked for sid in a], start_daemon)


def test_sessions_of_owners_that_died_while_down_are_reaped_at_startup(daemon, spawn_owner, start_daemon):
    doomed, survivor = spawn_owner(), spawn_owner()
    with daemon.client() as c:
        dead_sid = c.get_or_create("reap-me", pid=doomed.pid).session.session_id
        live_sid = c.get_or_create("keep-me", pid=survivor.pid).session.session_id
    assert daemon.stop() == 0
    doomed.kill()
    doomed.wait()

    restarted = start_daemon()
    with restarted.client() as c:
        dead, live = c.get(dead_sid), c.get(live_sid)
        assert dead.end_reason == "reaped" and dead.ended_at is not None
        assert live.live and live.end_reason is None
        assert "reaped 1 session(s)" in restarted.log_text()
        # The survivor is watched again: its death is noticed without a sweep.
        survivor.kill()
        survivor.wait()
        wait_for(lambda: c.get(live_sid).end_reason == "reaped", what="the survivor's session to be reaped")


# --- graceful stop ---------------------------------------------------------------------------


def test_sigterm_stops_gracefully_and_cleans_up(daemon, home):
    status_file = home / "status.json"
    wait_for(status_file.exists, what="status.json")  # written just after the socket starts listening

    assert daemon.stop() == 0

    assert not daemon.socket.exists()
    assert not status_file.exists()
    log = daemon.log_text()
    assert "stopped" in log and "Traceback" not in log


def test_sigterm_leaves_a_file_that_replaced_the_socket(daemon, home):
    wait_for((home / "status.json").exists, what="startup to finish")
    impostor = daemon.socket.with_name("impostor")
    impostor.write_text("not omnid's")
    os.replace(impostor, daemon.socket)

    assert daemon.stop() == 0

    assert daemon.socket.read_text() == "not omnid's"
    assert "stopped" in daemon.log_text()


# --- other users -----------------------------------------------------------------------------


def test_other_uid_cannot_reach_the_socket(daemon, home):
    os.chmod(home, 0o711)  # so only the socket's own directory stands in the way
    assert mode(daemon.socket.parent) == 0o700
    path = os.fspath(daemon.socket)

    def connect() -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return "connected"
        finally:
            s.close()

    out = as_user(connect)

    assert out.get("errno") == errno.EACCES, out
    assert_serving(daemon)


def test_other_uid_is_refused_even_when_the_socket_is_open_to_all(daemon, home):
    for path, perms in ((home, 0o711), (daemon.socket.parent, 0o711), (daemon.socket, 0o777)):
        os.chmod(path, perms)
    path = daemon.socket

    def talk() -> dict:
        with Wire(path) as w:
            w.send(hello_frame("x"))
            replies = w.replies_until_closed()
        return {"replies": [(r.id, r.error.code if r.error else None) for r in replies]}

    out = as_user(talk)

    assert out.get("ok") == {"replies": [[0, "permission"]]}, out
    assert f"refused connection from uid {NOBODY}" in daemon.log_text()
    assert_serving(daemon)


# --- private files ---------------------------------------------------------------------------


def test_state_and_socket_are_private(home, start_daemon, spawn_owner):
    os.chmod(home, 0o755)
    old_umask = os.umask(0o022)
    try:
        d = start_daemon()
    finally:
        os.umask(old_umask)
    with d.client() as c:
        c.get_or_create("private", pid=spawn_owner().pid)  # so the WAL has content

    assert mode(home) == 0o700, "the state directory was not made private"
    assert mode(d.socket.parent) == 0o700
    assert mode(d.socket) & 0o077 == 0
    for name in ("omnid.db", "omnid.db-wal", "omnid.lock", "status.json", "omnid.log"):
        assert mode(home / name) & 0o077 == 0, f"{name} is mode {oct(mode(home / name))}"


# --- autostart -------------------------------------------------------------------------------

_AUTOSTART_CLIENT = """
import json, sys
from omnid_client import Client
with Client(start_timeout=60, connect_timeout=20, timeout=20) as c:
    pid = c.connect().pid
    got = c.get_or_create(sys.argv[1])
print(json.dumps({"pid": pid, "tool": got.session.tool_id}))
"""


def test_racing_clients_autostart_exactly_one_daemon(home):
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", _AUTOSTART_CLIENT, f"racer-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    results = []
    for proc in clients:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        results.append(json.loads(out))

    pids = {r["pid"] for r in results}
    assert len(pids) == 1, f"clients were served by different daemons: {pids}"
    assert sorted(r["tool"] for r in results) == sorted(f"racer-{i}" for i in range(20))
    (pid,) = pids
    assert [p.pid for p in omnid_daemons(home)] == [pid]
    assert (home / "omnid.lock").read_text().strip() == str(pid)

    with Client(autostart=False) as c:
        c.shutdown()
    wait_for(lambda: gone(pid), what="the autostarted daemon to exit")


@pytest.mark.parametrize("leftover", ["nothing", "stale socket"])
def test_no_autostart_raises_unavailable_and_starts_nothing(home, leftover):
    if leftover == "stale socket":
        DaemonProcess(home).start().kill()

    with pytest.raises(Unavailable), Client(autostart=False) as c:
        c.status()

    assert omnid_daemons(home) == []
    socket_path = home / "run" / "omnid.sock"
    assert not accepts(socket_path)


# --- protocol robustness ---------------------------------------------------------------------

PROTOCOL_ERRORS = {
    # name: (greet first, bytes to send, code, words the message must contain)
    "frame over 1 MiB": (True, struct.pack(">I", MAX_FRAME + 1), "too_large", str(MAX_FRAME)),
    "msgpack list, not a request": (True, frame(msgspec.msgpack.encode([1, "hello", {}])), "protocol", "malformed"),
    "msgpack scalar, not a request": (False, frame(msgspec.msgpack.encode(42)), "protocol", "malformed"),
    "request before hello": (False, request(7, "daemon.status"), "protocol", "hello"),
    "hello without versions": (False, request(0, "hello", {"client_version": "x"}), "protocol", "hello"),
    "client newer than daemon": (False, hello(major=99), "version_mismatch", "the daemon is older"),
    "client older than daemon": (False, hello(major=0), "version_mismatch", "the client is older"),
}


@pytest.mark.parametrize("greet, data, code, words", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_bad_frame_gets_typed_error_then_close(daemon, greet, data, code, words):
    with Wire(daemon.socket) as w:
        if greet:
            w.send(hello())
            assert w.reply().error is None
        w.send(data)
        got_code, message = error_of(w.reply())
        assert (got_code, words in message) == (code, True), message
        assert w.reply() is None, "the daemon kept the connection open after a fatal error"
    assert_serving(daemon)


def test_request_before_hello_error_carries_the_request_id(daemon):
    with Wire(daemon.socket) as w:
        w.send(request(7, "daemon.status"))
        resp = w.reply()
    assert resp.id == 7 and resp.error.code == "protocol"


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("framed", [False, True], ids=["raw stream", "in valid frames"])
def test_garbage_gets_only_error_replies_and_daemon_survives(daemon, seed, framed):
    rng = random.Random(seed)
    if framed:
        data = hello() + b"".join(frame(rng.randbytes(rng.randrange(1, 2048))) for _ in range(20))
    else:
        data = rng.randbytes(64 * 1024)
    with Wire(daemon.socket) as w:
        w.send(data)
        w.end_writing()
        replies = w.replies_until_closed()
    if framed:
        assert replies and replies[0].error is None, "hello was not welcomed"
        replies = replies[1:]
        assert replies, "garbage in a valid frame got no error reply"
    for resp in replies:
        assert error_of(resp)[0] in ("protocol", "too_large")
    assert_serving(daemon)


def test_truncated_frame_then_close_is_dropped(daemon):
    with Wire(daemon.socket) as w:
        w.send(hello())
        assert w.reply().error is None
        w.send(struct.pack(">I", 100) + b"\x81" * 10)
    assert_serving(daemon)


NESTED = nested_arrays(100_000)


@pytest.mark.parametrize(
    "greet, data",
    [(True, frame(bytes(NESTED))), (True, request(1, "session.list", NESTED)), (False, request(0, "hello", NESTED))],
    ids=["whole frame", "request params", "hello params"],
)
def test_deeply_nested_message_gets_typed_error(daemon, greet, data):
    with Wire(daemon.socket) as w:
        if greet:
            w.send(hello())
            assert w.reply().error is None
        w.send(data)
        code, _ = error_of(w.reply())
        assert code in ("protocol", "invalid")
        if code == "protocol":
            assert w.reply() is None, "the daemon kept the connection open after a protocol error"
    assert_serving(daemon)


def test_silent_connections_are_closed_after_the_handshake_timeout(monkeypatch, start_daemon):
    # The behaviour, not the default's 10 s of waiting: OMNID_HANDSHAKE_TIMEOUT shortens it.
    monkeypatch.setenv("OMNID_HANDSHAKE_TIMEOUT", "2")
    daemon = start_daemon()
    with daemon.client() as client, Wire(daemon.socket, timeout=30) as silent, Wire(
        daemon.socket, timeout=30
    ) as half_header:
        half_header.send(b"\x00\x00")
        assert client.status().pid == daemon.pid, "a silent connection held up other clients"
        for w in (silent, half_header):
            code, message = error_of(w.reply())
            assert code == "protocol" and message == "no hello within 2s"
            assert w.reply() is None
        assert client.status().connections == 1


def test_pipelined_requests_all_get_their_own_reply(daemon, spawn_owner):
    owner = spawn_owner()
    count = 50
    methods = {}
    data = hello()
    for i in range(1, count + 1):
        tool = f"pipe-{(i + 1) // 2}"
        if i % 2:
            methods[i] = ("create", tool)
            data += request(i, "session.get_or_create", {"tool_id": tool, "pid": owner.pid})
        else:
            methods[i] = ("find", tool)
            data += request(i, "session.find", {"tool_id": tool, "pid": owner.pid})

    with Wire(daemon.socket) as w:
        w.send(data)
        replies = [w.reply() for _ in range(count + 1)]

    assert all(r is not None and r.error is None for r in replies), [r and r.error for r in replies]
    assert sorted(r.id for r in replies) == list(range(count + 1))
    created, found = {}, {}
    for r in replies:
        if r.id == 0:
            continue
        kind, tool = methods[r.id]
        if kind == "create":
            session = result_of(r, GetOrCreateResult).session
            created[tool] = session.session_id
        else:
            session = result_of(r, FindResult).session
            assert session is not None, f"request {r.id} did not find {tool} created just before it"
            found[tool] = session.session_id
        assert session.tool_id == tool
    assert created == found and len(created) == count // 2
    assert_serving(daemon)


def test_frames_split_anywhere_across_reads_are_reassembled(daemon, spawn_owner):
    """Pieces cut mid-header, mid-body and across frames, each read on its own."""
    owner = spawn_owner()
    data = hello()
    for i in range(1, 6):
        data += request(i, "session.get_or_create", {"tool_id": f"split-{i}", "pid": owner.pid})
    sizes = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    with Wire(daemon.socket) as w:
        at, k = 0, 0
        while at < len(data):
            w.send(data[at : at + sizes[k % len(sizes)]])
            at += sizes[k % len(sizes)]
            k += 1
            # The daemon has read this piece before the next is sent: each is a read of its own.
            wait_for(lambda: unread_by_peer(w.sock) == 0, what="the daemon to read the piece")
        replies = [w.reply() for _ in range(6)]
    assert [r.id for r in replies] == list(range(6))
    assert all(r.error is None for r in replies), [r.error for r in replies]
    tools = [result_of(r, GetOrCreateResult).session.tool_id for r in replies[1:]]
    assert tools == [f"split-{i}" for i in range(1, 6)]


# --- status ----------------------------------------------------------------------------------


def test_status_reports_the_daemon(daemon, client, home, spawn_owner):
    owners = [spawn_owner() for _ in range(3)]
    sids = [client.get_or_create(f"status-{i}", pid=o.pid).session.session_id for i, o in enumerate(owners)]
    client.end(sids[0])

    st = client.status()
    assert st.pid == daemon.pid
    assert st.version == omnid.__version__
    assert st.socket == str(daemon.socket)
    assert st.database == str(home / "omnid.db")
    assert st.schema_version == LATEST
    assert st.watcher == "pidfd"
    assert st.live_sessions == 2 == len(client.list_sessions(status="live").sessions)

    owners[1].kill()
    owners[1].wait()
    wait_for(lambda: client.status().live_sessions == 1, what="the dead owner's session to be reaped")
    reaped = client.reap()
    st = client.status()
    assert st.last_reap is not None
    assert (st.last_reap.trigger, st.last_reap.at, st.last_reap.reaped) == ("manual", reaped.at, len(reaped.sessions))


# --- paths -----------------------------------------------------------------------------------


def test_omnid_socket_overrides_the_socket_location(home, monkeypatch, start_daemon):
    custom = home / "elsewhere" / "my.sock"
    monkeypatch.setenv("OMNID_SOCKET", str(custom))

    d = start_daemon()

    assert stat.S_ISSOCK(os.lstat(custom).st_mode)
    assert not (home / "run" / "omnid.sock").exists()
    with Client(autostart=False) as c:
        assert c.status().socket == str(custom)
    assert json.loads((home / "status.json").read_text())["socket"] == str(custom)
    assert d.stop() == 0
    assert not custom.exists()


def _too_long(home: Path) -> tuple[Path, list[str]]:
    path = home / ("s" * (120 - len(os.fsencode(home)) - 1))
    assert len(os.fsencode(path)) == 120
    return path, [str(path), "OMNID_SOCKET"]


def _in_foreign_dir(home: Path) -> tuple[Path, list[str]]:
    foreign = home / "foreign"
    foreign.mkdir()
    os.chown(foreign, NOBODY, NOBODY)
    return foreign / "omnid.sock", [str(foreign), f"uid {NOBODY}"]


@pytest.mark.parametrize("make_path", [_too_long, _in_foreign_dir], ids=["over-long", "dir of another uid"])
def test_unusable_socket_path_is_refused(home, monkeypatch, make_path):
    path, words = make_path(home)
    monkeypatch.setenv("OMNID_SOCKET", str(path))

    refusal = Refusal(home)

    for word in words:
        assert word in refusal.stderr, refusal.stderr
    assert not os.path.lexists(path)
    refusal.assert_clean()


def test_database_from_a_newer_omnid_is_refused_and_left_untouched(home):
    db_path = home / "omnid.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("CREATE TABLE from_the_future (x)")
        db.execute("INSERT INTO from_the_future VALUES ('precious')")
        db.execute("PRAGMA user_version = 999")
        db.commit()
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()

    refusal = Refusal(home)

    assert "newer" in refusal.stderr and "999" in refusal.stderr, refusal.stderr
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before, "the newer database was modified"
    assert not (home / "run" / "omnid.sock").exists()
    refusal.assert_clean()
