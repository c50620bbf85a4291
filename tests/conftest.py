"""One way to start a real daemon: a real process on a real Unix socket, in a temp OMNID_HOME."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from omnid_client import Client
from omnid_client.paths import daemon_paths

START_TIMEOUT = 15.0


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_loop_until(loop: asyncio.AbstractEventLoop, predicate, timeout: float = 10.0) -> None:
    """Run ``loop`` until ``predicate()`` holds; fail the test after ``timeout`` seconds."""

    async def poll() -> None:
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                pytest.fail(f"timed out after {timeout}s")
            await asyncio.sleep(0.005)

    loop.run_until_complete(poll())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop for code run in the test process (reaper, watches)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def store(tmp_path):
    """A Store (committing every write at once) on a fresh database file; closed at the end."""
    from omnid.store import Store

    s = Store(tmp_path / "omnid.db")
    yield s
    s.close()


def db_rows(db_path: Path, sql: str, *args: Any) -> list[tuple]:
    """Rows from a database file (a daemon's, a backup), opened read-only."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def unread_by_peer(sock: socket.socket) -> int:
    """Bytes sent on a Unix stream socket that its peer has not read yet (SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


def accepts(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class DaemonProcess:
    """A daemon run as ``python -m omnid serve`` with this test's environment."""

    def __init__(self, home: Path):
        self.home = home
        self.proc: subprocess.Popen | None = None

    @property
    def paths(self):
        return daemon_paths()

    @property
    def socket(self) -> Path:
        return self.paths.socket

    @property
    def log(self) -> Path:
        return self.home / "omnid.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *extra: str, **popen) -> "DaemonProcess":
        """Start and wait until the socket accepts; ``popen`` goes to ``subprocess.Popen``."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnid", "serve", "--log-file", str(self.log), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.socket):
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"daemon exited with {self.proc.returncode}: {err.decode()}\nlog:\n{self.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"daemon did not listen on {self.socket}\nlog:\n{self.log_text()}")
            time.sleep(0.01)
        return self

    def client(self, **kwargs) -> Client:
        kwargs.setdefault("autostart", False)
        return Client(**kwargs)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        finally:
            self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def home(monkeypatch) -> Iterator[Path]:
    """A fresh OMNID_HOME, short enough for a socket path, used by everything in the test."""
    path = Path(tempfile.mkdtemp(prefix="omnid-t-", dir="/tmp"))
    monkeypatch.setenv("OMNID_HOME", str(path))
    monkeypatch.delenv("OMNID_SOCKET", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(home) -> Iterator[DaemonProcess]:
    d = DaemonProcess(home).start()
    yield d
    if d.running:
        assert d.stop() == 0, d.log_text()
    assert "Traceback" not in d.log_text(), d.log_text()


def omnid_daemons(home: Path) -> list[psutil.Process]:
    """Every live ``omnid serve`` process whose OMNID_HOME is ``home``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or "serve" not in cmdline:
            continue
        if not any("omnid" in part for part in cmdline):
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("OMNID_HOME") == str(home):
                found.append(proc)
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def no_stray_daemons(home) -> Iterator[None]:
    """Kill whatever daemon a failed test left behind for this home (detached ones included)."""
    yield
    for proc in omnid_daemons(home):
        with contextlib.suppress(psutil.Error):
            proc.kill()
        wait_for(lambda pid=proc.pid: gone(pid), what=f"stray daemon {proc.pid} to die")


@contextlib.contextmanager
def started_daemons(make: Callable[[int], DaemonProcess]) -> Iterator[Callable[..., DaemonProcess]]:
    """``start(*serve_args, **popen_kwargs)`` starts the n-th daemon ``make(n)`` builds; at
    the end each still running is stopped (status 0), and no log may hold a traceback."""
    started: list[DaemonProcess] = []

    def start(*extra: str, **popen) -> DaemonProcess:
        d = make(len(started)).start(*extra, **popen)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.running:
            assert d.stop() == 0, d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()


@pytest.fixture
def start_daemon(home) -> Iterator[Callable[..., DaemonProcess]]:
    """Start further daemons on ``home``; see ``started_daemons``."""
    with started_daemons(lambda _: DaemonProcess(home)) as start:
        yield start


@pytest.fixture
def client(daemon) -> Iterator[Client]:
    with daemon.client() as c:
        yield c


@pytest.fixture
def spawn_owner() -> Iterator:
    """Start real processes to own sessions (``sleep``); all are killed and waited for at the end."""
    procs: list[subprocess.Popen] = []

    def spawn(*, user: int | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "600"], user=user)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def _never_touch_the_real_home(monkeypatch) -> None:
    """Tests that forget the ``home`` fixture still must not reach a user's real daemon."""
    if "OMNID_HOME" not in os.environ:
        monkeypatch.setenv("OMNID_HOME", "/nonexistent/omnid-test-home")


# --- the omnid command, as a user runs it ----------------------------------------------


def run_omnid(
    *args: str, cwd: Path | None = None, stdin=subprocess.DEVNULL, text: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python -m omnid ARGS`` in this test's environment (its OMNID_HOME)."""
    return subprocess.run(
        [sys.executable, "-m", "omnid", *args],
        env=os.environ,
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        text=text,
        timeout=timeout,
        check=False,
    )


def omnid_ok(*args: str, cwd: Path | None = None, text: bool = True):
    """The stdout of a command that must succeed."""
    r = run_omnid(*args, cwd=cwd, text=text)
    assert r.returncode == 0, f"omnid {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    return r.stdout


def omnid_json(*args: str, cwd: Path | None = None):
    return json.loads(omnid_ok(*args, "--json", cwd=cwd))


def omnid_error(*args: str, cwd: Path | None = None) -> dict:
    """The JSON error of a command that must exit 1."""
    r = run_omnid(*args, "--json", cwd=cwd)
    assert r.returncode == 1, f"omnid {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    return json.loads(r.stdout)["error"]


# --- owner processes as the kernel sees them -------------------------------------------


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [0] is the state (field 3)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rindex(b")") + 2 :].decode().split()


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks after boot: field 22 of /proc/PID/stat."""
    return int(proc_stat(pid)[22 - 3])


def process_state(pid: int) -> str:
    return proc_stat(pid)[0]


class ForkedOwner:
    """A child of the test process that runs until ``exit()``, and then stays an unreaped
    zombie until the fixture's teardown waits for it."""

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: block until the parent writes or goes away, then exit
            os.close(w)
            try:
                os.read(r, 1)
            finally:
                os._exit(0)
        os.close(r)
        self.pid = pid
        self._w = w
        self.reaped = False

    def exit(self) -> None:
        """Make it exit and wait until it is a zombie (not reaped)."""
        if self._w >= 0:
            os.write(self._w, b"x")
            os.close(self._w)
            self._w = -1
        wait_for(lambda: process_state(self.pid) == "Z", what=f"child {self.pid} to become a zombie")

    def reap(self) -> None:
        if not self.reaped:
            if self._w >= 0:
                os.close(self._w)
                self._w = -1
            os.waitpid(self.pid, 0)
            self.reaped = True


@pytest.fixture
def forked_owner() -> Iterator[Callable[[], ForkedOwner]]:
    """``forked_owner()`` forks a child that lives until its ``exit()``; all are reaped at the end."""
    owners: list[ForkedOwner] = []

    def fork() -> ForkedOwner:
        owners.append(ForkedOwner())
        return owners[-1]

    yield fork
    for owner in owners:
        owner.reap()


@pytest.fixture
def zombie(forked_owner) -> Callable[[], int]:
    """``zombie()``: the pid of a child of the test process that has exited but is not reaped."""

    def make() -> int:
        owner = forked_owner()
        owner.exit()
        return owner.pid

    return make
