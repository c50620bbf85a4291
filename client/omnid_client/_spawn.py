"""Starting a daemon on demand: exactly one, even when many clients find none at once."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import select
import shutil
import subprocess
import sys
import time
from typing import Callable

from .errors import Timeout, Unavailable
from .paths import Paths, PathError, ensure_private_dir


def daemon_command() -> list[str]:
    if importlib.util.find_spec("omnid") is not None:
        return [sys.executable, "-m", "omnid"]
    exe = shutil.which("omnid")
    if exe:
        return [exe]
    raise Unavailable("no omnid daemon is running and the omnid package is not installed to start one")


def start_daemon(paths: Paths, reachable: Callable[[], bool], timeout: float) -> None:
    """Start a detached daemon unless ``reachable()`` turns true while we wait our turn.

    Clients serialise on a spawn lock beside the database, so racing clients start one
    daemon between them; the others find it reachable once they hold the lock.
    """
    deadline = time.monotonic() + timeout
    try:
        ensure_private_dir(paths.state_dir)
    except PathError as e:
        raise Unavailable(str(e)) from e
    fd = os.open(paths.spawn_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Timeout(f"timed out waiting for another client to start omnid ({paths.spawn_lock})")
                time.sleep(0.005)
        if reachable():
            return
        _spawn_and_wait(paths, deadline)
    finally:
        os.close(fd)


def _spawn_and_wait(paths: Paths, deadline: float) -> None:
    read_end, write_end = os.pipe()
    try:
        cmd = daemon_command() + ["serve", "--detach", "--ready-fd", str(write_end), "--log-file", str(paths.log)]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            pass_fds=(write_end,),
            cwd=paths.state_dir,
        )
        os.close(write_end)
        write_end = -1
        line = _read_line(read_end, deadline)
        # The launcher exits as soon as the detached daemon has forked.
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    kind, _, rest = line.partition(" ")
    if kind in ("ready", "running"):
        return
    if not line:
        raise Unavailable(f"omnid did not report ready in time; see {paths.log}")
    raise Unavailable(f"omnid failed to start: {rest or line}; see {paths.log}")


def _read_line(fd: int, deadline: float) -> str:
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
