"""Fixtures: a fresh OMNID_HOME per test, a real daemon in it, its clients and owner processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from omnid.identity import ProcessIdentity, boot_id
from omnid_client import Client
from tests.helpers import (
    EXITED,
    REBOOTED,
    REUSED,
    RUNNING,
    DaemonProcess,
    ForkedOwner,
    Tmux,
    built_wheels,
    gone,
    identity_of,
    omnid_daemons,
    start_ticks,
    started_daemons,
    wait_for,
)


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


@pytest.fixture
def no_stray_daemons(home) -> Iterator[None]:
    """Kill whatever daemon a failed test left behind for this home (detached ones included)."""
    yield
    for proc in omnid_daemons(home):
        with contextlib.suppress(psutil.Error):
            proc.kill()
        wait_for(lambda pid=proc.pid: gone(pid), what=f"stray daemon {proc.pid} to die")


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

    def spawn(*, user: int | None = None, cwd: Path | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "600"], user=user, cwd=cwd)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def tmux(tmp_path) -> Iterator[Callable[..., Tmux]]:
    """``start(command, width=, height=)``: a real terminal (tmux) running ``command`` in tmp_path."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    made: list[Tmux] = []

    def start(command: list[str], **size: int) -> Tmux:
        made.append(Tmux(command, tmp_path, **size))
        return made[-1]

    yield start
    for t in made:
        t.close()


@pytest.fixture(scope="session")
def wheels() -> Iterator[dict[str, Path]]:
    """The omnid and omnid-client wheels, built once for the whole run (pip wheel takes
    seconds of CPU, and the client's package test and the packaging tests read the same)."""
    with built_wheels() as found:
        yield found


@pytest.fixture(autouse=True)
def _never_touch_the_real_home(monkeypatch) -> None:
    """Tests that forget the ``home`` fixture still must not reach a user's real daemon."""
    if "OMNID_HOME" not in os.environ:
        monkeypatch.setenv("OMNID_HOME", "/nonexistent/omnid-test-home")


# --- in-process code: an event loop and a store of its own ------------------------------


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


# --- owner processes that are children of the test process -------------------------------


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


@pytest.fixture
def owners(spawn_owner, zombie):
    """``owners()``: one owner process in each state a liveness check tells apart, with the
    cause it must give: {state: (identity as recorded, cause)}."""

    def make() -> dict[str, tuple[ProcessIdentity, str]]:
        exited = spawn_owner()
        exited_identity = identity_of(exited.pid)
        exited.kill()
        exited.wait()
        zombie_pid = zombie()
        return {
            "running": (identity_of(spawn_owner().pid), RUNNING),
            "exited": (exited_identity, EXITED),
            "zombie": (ProcessIdentity(zombie_pid, start_ticks(zombie_pid), boot_id()), EXITED),
            "reused": (identity_of(spawn_owner().pid, shift=1), REUSED),
            "rebooted": (identity_of(spawn_owner().pid, boot="a-previous-boot"), REBOOTED),
        }

    return make
