"""systemd's side of the daemon with real processes: socket activation through
``systemd-socket-activate`` (the inherited socket is served, never re-bound, and outlives
the daemon), sd_notify readiness, watchdog and stopping messages to a real datagram
socket (path and abstract), and log lines for the journal."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from omnid_client import Client
from tests.helpers import SOCKET_ACTIVATE, Activator, DaemonProcess, accepts, wait_for

needs_socket_activate = pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")




@needs_socket_activate
def test_socket_activation_serves_the_inherited_socket_and_leaves_it_in_place(home, spawn_owner):
    run_dir = home / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "omnid.sock"
    activator = Activator(home, sock)
    try:
        inode = os.stat(sock).st_ino
        with Client(autostart=False, connect_timeout=15) as client:  # this connection starts the daemon
            st = client.status()
            owner = spawn_owner()
            sid = client.get_or_create("activated-tool", pid=owner.pid).session.session_id
        assert st.socket == str(sock) and st.socket_source == "systemd" and st.managed_by == "systemd"
        assert st.pid == activator.proc.pid  # it execs the daemon in its own place
        assert os.stat(sock).st_ino == inode, "the daemon bound the socket again"
        assert "inherited from systemd" in activator.log()

        os.kill(st.pid, signal.SIGTERM)
        assert activator.proc.wait(10) == 0
        assert stat.S_ISSOCK(os.lstat(sock).st_mode) and os.stat(sock).st_ino == inode, "the socket file must survive"
        assert "stopped" in activator.log() and "Traceback" not in activator.log()
    finally:
        activator.close()

    activator = Activator(home, sock)  # a second activation: the session is still there
    try:
        with Client(autostart=False, connect_timeout=15) as client:
            assert client.get(sid).live
            client.shutdown()
    finally:
        activator.close()


@needs_socket_activate
def test_an_activated_daemon_takes_over_from_one_a_client_started(home):
    first = DaemonProcess(home).start()
    activated_sock = home / "sd" / "omnid.sock"
    activated_sock.parent.mkdir(mode=0o700)
    activator = Activator(home, activated_sock)
    try:
        with Client(activated_sock, autostart=False, connect_timeout=15) as client:
            st = client.status()
        assert st.socket_source == "systemd"
        assert first.proc.wait(15) == 0, "the daemon a client started was asked to stop"
        assert "asking it to stop" in activator.log()
        with Client(activated_sock, autostart=False) as client:
            client.shutdown()
    finally:
        activator.close()
        if first.running:
            first.kill()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_readiness_watchdog_and_stopping_are_notified(home, monkeypatch, abstract):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"omnid-test-{uuid.uuid4().hex}"
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        listener.bind(str(home / "notify.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(home / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    listener.settimeout(10)
    d = DaemonProcess(home)
    try:
        d.start()
        messages = [listener.recv(4096).decode() for _ in range(4)]
        ready = messages[0].split("\n")
        assert "READY=1" in ready and f"MAINPID={d.pid}" in ready
        assert messages[1:] == ["WATCHDOG=1"] * 3
        with d.client() as c:
            assert c.status().managed_by == "systemd"
        assert d.stop() == 0
        rest = []
        while not any("STOPPING=1" in m for m in rest):
            rest.append(listener.recv(4096).decode())
        assert not any("READY=1" in m for m in rest)
    finally:
        listener.close()
        if d.running:
            d.kill()


def serve_with_stderr(home: Path, stderr) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "omnid", "serve"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    wait_for(lambda: accepts(home / "run" / "omnid.sock") or proc.poll() is not None, what="the daemon to listen")
    assert proc.poll() is None
    return proc


def test_log_lines_for_the_journal_carry_priorities_and_no_timestamps(home, monkeypatch):
    err_path = home / "journal.txt"
    with open(err_path, "wb") as err:
        st = os.fstat(err.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        proc = serve_with_stderr(home, err)
        try:
            with Client(autostart=False) as c:
                status = c.status()
                c.shutdown()
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert status.log_target == "journald" and status.log is None
    lines = err_path.read_text().splitlines()
    assert any(line.startswith("<6>omnid.server: omnid ") and "serving" in line for line in lines), lines
    assert all(line.startswith("<") for line in lines), lines


def test_under_systemd_without_the_journal_logs_have_no_timestamps(home, monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", uuid.uuid4().hex)
    err_path = home / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = serve_with_stderr(home, err)
        try:
            with Client(autostart=False) as c:
                assert c.status().log_target == "stderr (systemd)"
                c.shutdown()
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    lines = err_path.read_text().splitlines()
    assert any(line.startswith("INFO omnid.server: omnid ") for line in lines), lines


def test_passed_descriptors_are_checked_before_they_are_served(home):
    script = 'exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" -m omnid serve'
    refused = subprocess.run(["sh", "-c", script, sys.executable], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "not a socket" in refused.stderr and "Traceback" not in refused.stderr

    script = 'exec 3</dev/null; LISTEN_PID=1 LISTEN_FDS=1 exec "$0" -m omnid serve'  # meant for another process
    proc = subprocess.Popen(["sh", "-c", script, sys.executable], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: accepts(home / "run" / "omnid.sock") or proc.poll() is not None, what="the daemon to bind")
        with Client(autostart=False) as c:
            assert c.status().socket_source == "bound"
            c.shutdown()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
