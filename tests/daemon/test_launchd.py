"""launchd's side, as far as Linux can check it: the LaunchAgent plist (valid, with a
``Sockets`` entry where clients look and an unthrottled ProcessType), the ctypes path to
launch_activate_socket taken on macOS only, the socket adoption it shares with systemd on a
real inherited socket, and serve's exit status under launchd. Loading the agent and the
ctypes call themselves need macOS (see the README)."""

from __future__ import annotations

import os
import plistlib
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from omnid.daemon import launchd
from omnid.daemon.instance import Instance
from omnid.offline.service import render_launchd
from omnid_client import Client
from omnid_client.paths import LAUNCHD_LABEL, LAUNCHD_SOCKET_KEY, daemon_paths
from tests.helpers import ROOT, accepts


def test_the_plist_holds_the_socket_where_clients_look_and_is_not_throttled(home):
    shipped = plistlib.loads((ROOT / "launchd" / f"{LAUNCHD_LABEL}.plist").read_bytes())
    plain = plistlib.loads(render_launchd("/usr/bin/python3", {}, Path("/Users/ann")))
    assert shipped["ProcessType"] == plain["ProcessType"] == "Interactive"  # Background throttles CPU and I/O
    assert plain["Sockets"] == {
        LAUNCHD_SOCKET_KEY: {
            "SockPathName": "/Users/ann/Library/Application Support/omnid/omnid.sock",  # paths.daemon_paths on macOS
            "SockPathMode": 0o600, "SockType": "stream", "SockFamily": "Unix",
        }
    }
    assert plain["KeepAlive"] == {"SuccessfulExit": False} and plain["RunAtLoad"] is True

    with_home = plistlib.loads(render_launchd("/usr/bin/python3", {"OMNID_HOME": str(home)}, Path("/Users/ann")))
    assert with_home["Sockets"][LAUNCHD_SOCKET_KEY]["SockPathName"] == str(daemon_paths().socket)
    own = plistlib.loads(render_launchd("/usr/bin/python3", {"OMNID_SOCKET": "/tmp/o/s.sock"}, Path("/Users/ann")))
    assert own["Sockets"][LAUNCHD_SOCKET_KEY]["SockPathName"] == "/tmp/o/s.sock"
    deep = plistlib.loads(render_launchd("/usr/bin/python3", {"OMNID_HOME": "/h/" + "d" * 120}, Path("/Users/ann")))
    assert "Sockets" not in deep, "a socket path past the limit: the daemon binds a short directory of its own"


def test_launch_activate_socket_is_called_only_on_macos_under_launchd(monkeypatch):
    monkeypatch.setenv("XPC_SERVICE_NAME", LAUNCHD_LABEL)
    assert launchd.started_by_launchd()
    assert launchd.listen_fds("linux") == []
    if sys.platform != "darwin":
        with pytest.raises(OSError):  # the ctypes path, taken: Linux has no libSystem to load
            launchd.listen_fds("darwin")
    monkeypatch.setenv("XPC_SERVICE_NAME", "com.example.other")
    assert not launchd.started_by_launchd()
    assert launchd.listen_fds("darwin") == []


def test_a_socket_launchd_passes_is_served_and_never_removed(home):
    paths = daemon_paths()
    paths.socket.parent.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(paths.socket))
    listener.listen(8)
    inherited = os.dup(listener.fileno())  # as launch_activate_socket returns it: a descriptor of its own
    instance = Instance(paths)
    instance.adopt_socket(inherited, owner="launchd")
    try:
        assert instance.socket_source == "launchd" and instance.socket_inherited
        assert instance.listening_socket is not None and instance.listening_socket.fileno() == inherited
        instance.acquire_lock()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(paths.socket))
            conn, _ = instance.listening_socket.accept()
            conn.close()
    finally:
        instance.release()
        if instance.listening_socket is not None:
            instance.listening_socket.close()
    assert stat.S_ISSOCK(os.lstat(paths.socket).st_mode), "the socket is launchd's: it must outlive the daemon"
    assert accepts(paths.socket), "launchd's own descriptor still listens"
    listener.close()


def test_serve_under_launchd_leaves_a_running_daemon_be_with_exit_status_0(home, daemon):
    env = {**os.environ, "XPC_SERVICE_NAME": LAUNCHD_LABEL}
    r = subprocess.run([sys.executable, "-m", "omnid", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # KeepAlive would restart an exit status 4 again and again
    assert f"pid {daemon.pid}" in r.stderr
    with Client(autostart=False) as client:
        assert client.status().pid == daemon.pid
