"""A daemon left alone: it binds its socket again when the file (or its directory) is
deleted or replaced by a dead socket, stops when something else took the path, and
while idle it does not wake up at all."""

from __future__ import annotations

import glob
import os
import socket
import stat
import time

import pytest

from omnid.daemon import upgrade
from omnid_client import Client
from tests.helpers import accepts, fd_targets, wait_for


def inode(path) -> int:
    return os.lstat(path).st_ino


def rebound(sock, old_inode: int) -> bool:
    try:
        return inode(sock) != old_inode and accepts(sock)
    except FileNotFoundError:
        return False


def test_a_deleted_socket_is_bound_again(daemon, client, spawn_owner):
    owner = spawn_owner()
    sid = client.get_or_create("heal-tool", pid=owner.pid).session.session_id
    before = inode(daemon.socket)

    os.unlink(daemon.socket)

    wait_for(lambda: rebound(daemon.socket, before), what="the socket to be bound again")
    assert stat.S_IMODE(os.lstat(daemon.socket).st_mode) & 0o077 == 0
    with daemon.client() as fresh:
        assert fresh.status().pid == daemon.pid
        assert fresh.get(sid).live
    assert client.get(sid).live, "connections made before keep working"
    assert "was deleted; bound it again" in daemon.log_text()


def test_a_deleted_socket_directory_is_made_again(daemon, home):
    before = inode(daemon.socket)
    run_dir = daemon.socket.parent
    os.unlink(daemon.socket)
    os.rmdir(run_dir)

    wait_for(lambda: rebound(daemon.socket, before), what="the directory and socket to be made again")
    assert stat.S_IMODE(os.lstat(run_dir).st_mode) == 0o700
    with daemon.client() as c:
        assert c.status().pid == daemon.pid


def test_a_dead_socket_put_in_its_place_is_replaced(daemon):
    before = inode(daemon.socket)
    os.unlink(daemon.socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as impostor:
        impostor.bind(os.fspath(daemon.socket))  # bound, never listening, then closed: a stale file
    wait_for(lambda: rebound(daemon.socket, before), what="the stale socket to be replaced")
    with daemon.client() as c:
        assert c.status().pid == daemon.pid


def test_a_file_put_in_its_place_is_left_alone_and_the_daemon_stops(daemon):
    os.unlink(daemon.socket)
    daemon.socket.write_text("somebody's notes\n")

    assert daemon.proc.wait(10) == 0
    assert daemon.socket.read_text() == "somebody's notes\n"
    assert "not a socket" in daemon.log_text() and "stopping" in daemon.log_text()


def test_a_live_socket_of_someone_else_is_not_taken_over(daemon):
    os.unlink(daemon.socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(os.fspath(daemon.socket))
        other.listen(8)
        assert daemon.proc.wait(10) == 0
        assert accepts(daemon.socket), "the other listener's socket file must stay"
    assert "another omnid" in daemon.log_text()


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(path) as f:
                for line in f:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return total


def client_connections(pid: int, socket_path) -> int:
    """The process's accepted connections on ``socket_path``: connected (state 03 in
    /proc/net/unix) and named by that path, as accepted sockets are; the listener is not."""
    connected = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[5] == "03" and fields[7:] == [str(socket_path)]:
                connected.add(fields[6])
    return sum(target.startswith("socket:[") and target[8:-1] in connected for target in fd_targets(pid))


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc to count context switches")
def test_an_idle_daemon_does_not_wake_up(home, spawn_owner):
    (home / "config.toml").write_text("idle_expiry = 3600\n")  # the config watch is armed too
    from tests.helpers import DaemonProcess

    d = DaemonProcess(home).start()
    try:
        with d.client() as c:
            for i in range(3):  # watched owner processes (pidfds) must not cost wake-ups either
                c.get_or_create(f"idle-{i}", pid=spawn_owner().pid)
            assert c.status().config_state == "loaded"
        # The daemon has closed its end of every client connection (handling a close is work),
        # and kept its copy of the running code (file work in a thread, once after starting).
        wait_for(lambda: client_connections(d.pid, d.socket) == 0, what="the daemon to close its client connections")
        snapshot = d.paths.state_dir / upgrade.SNAPSHOT / upgrade.SNAPSHOT_MARK
        wait_for(snapshot.exists, timeout=60, what="the daemon's copy of its running code")
        # ...and has handled that copy's completion: no thread switched between two looks.
        last = [-1]

        def quiet() -> bool:
            now = context_switches(d.pid)
            was, last[0] = last[0], now
            return now == was

        wait_for(quiet, interval=0.2, what="the daemon to go quiet after its startup work")
        before = context_switches(d.pid)
        time.sleep(5)
        woke = context_switches(d.pid) - before
        assert d.running
        # Each wake-up costs at least one context switch; the only timers left are the
        # ~60 s sweep and the memory purge (none due), so the daemon must stay asleep.
        assert woke <= 2, f"an idle daemon woke up {woke} times in 5 s"
    finally:
        assert d.stop() == 0


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc to count context switches")
def test_the_idle_measure_sees_a_busy_daemon(daemon):
    """The measure above can fail: the same count over a daemon that answers requests grows."""
    with Client(autostart=False) as c:
        before = context_switches(daemon.pid)
        for _ in range(20):
            c.status()
            time.sleep(0.01)
        assert context_switches(daemon.pid) - before >= 20
