"""Upgrades with real processes: a daemon runs from its own copy of the package (a temp
dir on PYTHONPATH, standing in for site-packages); the copy is then changed on disk as
pip would change it. The daemon re-execs into the new code with the same pid, socket and
sessions, refuses code that does not import, and both sides say which one is older."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omnid_client import Client, OmnidError, __version__ as CLIENT_VERSION
from tests.helpers import ROOT, DaemonProcess, wait_for

CHECKOUT_PYTHONPATH = os.environ.get("PYTHONPATH", "")


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A private copy of the omnid packages that daemons started by this test run from."""
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "omnid", site / "omnid", ignore=ignore)
    shutil.copytree(ROOT / "client" / "omnid_client", site / "omnid_client", ignore=ignore)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.chdir(tmp_path)  # `python -m` puts the working directory first on sys.path
    return site


def replace_file(path: Path, text: str) -> None:
    """Write a new file and rename it over the old one, as an installer does."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_version(site: Path, version: str) -> None:
    init = site / "omnid" / "__init__.py"
    replace_file(init, re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))


def current_status():
    """The daemon's status through a fresh connection, or None while it restarts."""
    try:
        with Client(autostart=False, connect_timeout=5) as c:
            return c.status()
    except OmnidError:
        return None


def checkout_omnid(*args: str) -> subprocess.CompletedProcess:
    """The ``omnid`` command of this checkout (not of the daemon's copy)."""
    env = {**os.environ, "PYTHONPATH": CHECKOUT_PYTHONPATH}
    return subprocess.run([sys.executable, "-m", "omnid", *args], env=env, capture_output=True, text=True, timeout=60)


def test_an_upgraded_package_is_run_by_the_same_process_with_the_same_socket_and_sessions(home, site, spawn_owner):
    set_version(site, "0.0.9")
    d = DaemonProcess(home).start()
    try:
        with Client(autostart=False) as c:
            assert c.connect().server_version == "0.0.9"
            assert c.version_note.startswith(f"the omnid daemon (0.0.9) is older than this client ({CLIENT_VERSION})")
            owner = spawn_owner()
            sid = c.get_or_create("upgrade-tool", pid=owner.pid).session.session_id
        shown = checkout_omnid("status")
        assert shown.returncode == 0 and "daemon (0.0.9) is older" in shown.stderr
        socket_inode = os.stat(d.socket).st_ino

        set_version(site, "9.0.0")

        st = wait_for(lambda: (s := current_status()) and s.version == "9.0.0" and s, timeout=30, what="9.0.0 to run")
        assert st.pid == d.pid and d.running, "the daemon re-execs itself rather than handing over to another process"
        assert os.stat(d.socket).st_ino == socket_inode, "the listening socket was handed over, not bound again"
        assert st.upgrade_error is None
        with Client(autostart=False) as c:
            c.connect()
            assert c.version_note.startswith(f"this client ({CLIENT_VERSION}) is older than the omnid daemon (9.0.0)")
            assert c.get(sid).live
            owner.kill()
            owner.wait()
            wait_for(lambda: c.get(sid).end_reason == "reaped", what="the new process to watch the owner")
        as_json = checkout_omnid("status", "--json")
        assert '"version_note": "this client' in as_json.stdout
        log = d.log_text()
        assert "restarting into it" in log and "0.0.9 -> 9.0.0" in log
    finally:
        assert d.stop() == 0, d.log_text()
    assert not d.socket.exists()
    assert "Traceback" not in d.log_text()


def test_a_package_that_does_not_import_is_refused_until_it_is_fixed(home, site):
    d = DaemonProcess(home).start()
    try:
        before = current_status()
        codec = site / "omnid" / "store" / "codec.py"
        init = site / "omnid" / "__init__.py"
        good = codec.read_text()
        replace_file(codec, good + "\nthis is not python (\n")
        replace_file(init, init.read_text())  # an installer rewrites every file, __init__.py too

        st = wait_for(lambda: (s := current_status()) and s.upgrade_error and s, timeout=30, what="the refusal")
        assert "does not import" in st.upgrade_error and "SyntaxError" in st.upgrade_error
        assert st.pid == before.pid and st.started_at == before.started_at, "the old code keeps running"
        shown = checkout_omnid("status")
        assert "upgrade:" in shown.stdout and "SyntaxError" in shown.stdout

        replace_file(codec, good)
        replace_file(init, init.read_text())
        st = wait_for(
            lambda: (s := current_status()) and s.started_at != before.started_at and s,
            timeout=30, what="the fixed package to be run",
        )
        assert st.pid == before.pid and st.upgrade_error is None
    finally:
        assert d.stop() == 0, d.log_text()
    assert "Traceback" not in d.log_text()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed")
def test_an_upgrade_keeps_serving_systemds_socket(home, site):
    from tests.helpers import Activator

    run_dir = home / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "omnid.sock"
    activator = Activator(home, sock)
    try:
        with Client(autostart=False, connect_timeout=15, timeout=15) as c:
            first = c.status()
        set_version(site, "9.1.0")
        st = wait_for(lambda: (s := current_status()) and s.version == "9.1.0" and s, timeout=30, what="9.1.0 to run")
        assert st.pid == first.pid and st.socket_source == "systemd" and st.managed_by == "systemd"
        with Client(autostart=False) as c:
            c.shutdown()
        assert activator.proc.wait(10) == 0
        assert sock.exists(), "systemd's socket outlives the daemon, upgraded or not"
        assert "Traceback" not in activator.log()
    finally:
        activator.close()


def test_an_unknown_method_from_a_newer_client_says_the_daemon_is_older(daemon):
    from omnid_client.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR
    from tests.helpers import Wire, error_of, hello, request

    with Wire(daemon.socket) as wire:
        wire.send(hello(PROTOCOL_MAJOR, PROTOCOL_MINOR + 1))
        assert wire.reply().error is None
        wire.send(request(1, "session.teleport", {}))
        code, message = error_of(wire.reply())
    assert code == "unsupported"
    assert "unknown method 'session.teleport'" in message
    assert "the daemon" in message and "is older than the client" in message


def test_an_upgrade_that_fails_before_it_is_ready_falls_back_to_the_code_that_ran(home, site, spawn_owner):
    """New code that imports (so the preflight passes) but whose ``serve`` raises: the
    re-exec'd process runs the copy of the old code instead, with the same pid, socket and
    sessions, says why, and still moves on to the next (fixed) package."""
    set_version(site, "1.5.0")
    d = DaemonProcess(home).start()
    try:
        with Client(autostart=False) as c:
            owner = spawn_owner()
            sid = c.get_or_create("upgrade-tool", pid=owner.pid).session.session_id
            assert c.status().version == "1.5.0"
        wait_for(lambda: (home / "code" / "omnid-snapshot").exists(), what="the copy of the running code")
        app_py = site / "omnid" / "daemon" / "app.py"
        good = app_py.read_text()
        marker = "    async def serve(self, on_ready: Callable[[], None]) -> None:\n"
        assert marker in good
        replace_file(app_py, good.replace(marker, marker + '        raise RuntimeError("the new code cannot serve")\n'))
        set_version(site, "9.2.0")

        st = wait_for(lambda: (s := current_status()) and s.upgrade_error and s, timeout=30, what="the fallback")
        assert st.version == "1.5.0" and st.pid == d.pid and d.running
        assert "9.2.0" in st.upgrade_error and "failed before it was ready" in st.upgrade_error
        assert "the new code cannot serve" in st.upgrade_error
        log = d.log_text()
        assert "restarting into it" in log and "RuntimeError: the new code cannot serve" in log
        with Client(autostart=False) as c:
            assert c.get(sid).live, "the sessions are still there"
            assert c.get_or_create("upgrade-tool", pid=owner.pid).session.session_id == sid
            owner.kill()
            owner.wait()
            wait_for(lambda: c.get(sid).end_reason == "reaped", what="the old code to reap the dead owner")

        replace_file(app_py, good)  # the fixed package: the old code moves on to it
        set_version(site, "9.2.1")
        st = wait_for(lambda: (s := current_status()) and s.version == "9.2.1" and s, timeout=30, what="9.2.1 to run")
        assert st.pid == d.pid and st.upgrade_error is None
    finally:
        assert d.stop() == 0, d.log_text()
    assert not d.socket.exists()


def test_the_daemon_imports_its_own_modules_and_never_the_cli_process_ones():
    """The daemon imports all of its code at start (upgrade safety), but none of what runs in the CLI
    process: click, the MCP SDK, rich and the compat server are optional extras it must never load, nor
    sqlite-vec (loaded by the search thread only once a search asks for it), nor model2vec and numpy
    (loaded by the embedder thread only once a request needs an embedding from a configured model)."""
    probe = (
        "import sys; from omnid.daemon.upgrade import import_everything; names = import_everything(); "
        "print(len(names)); "
        "extras = ('click', 'mcp', 'pydantic', 'starlette', 'rich', 'sqlite_vec', 'pysqlite3', 'prometheus_client', "
        "'model2vec', 'numpy', 'tokenizers', 'safetensors'); "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in extras"
        " or m.startswith(('omnid.cli', 'omnid.mcp', 'omnid.compat', 'omnid.offline'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert int(out[0]) > 50, out  # the daemon's own modules are all there
    assert out[1] == "", f"the daemon loaded CLI-process modules: {out[1]}"
