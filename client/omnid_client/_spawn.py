"""Starting a daemon on demand: exactly one, even when many clients find none at once.

An installed service unit is asked first; a detached child is the fallback."""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import Timeout, Unavailable
from .paths import InstalledService, PathError, Paths, ensure_private_dir, installed_service

log = logging.getLogger("omnid_client")

SERVICE_MANAGER_TIMEOUT = 5.0


def daemon_command() -> list[str]:
    if importlib.util.find_spec("omnid") is not None:
        return [sys.executable, "-m", "omnid"]
    exe = shutil.which("omnid")
    if exe:
        return [exe]
    raise Unavailable("no omnid daemon is running and the omnid package is not installed to start one")


def start_daemon(
    paths: Paths, reachable: Callable[[Path], bool], timeout: float, *, use_service: bool = True
) -> Path:
    """Start a daemon unless ``reachable(paths.socket)`` turns true while we wait our turn;
    returns the socket it answers on.

    Clients serialise on a spawn lock beside the database, so racing clients start one
    daemon between them; the others find it reachable once they hold the lock. When an
    omnid unit is installed for this environment, its service manager starts the daemon;
    if the manager cannot, a detached child is started as without one. ``use_service``
    False (a client given an explicit socket) skips the service manager.
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
                    raise Timeout(f"timed out waiting for another client to start omnid ({paths.spawn_lock})") from None
                time.sleep(0.005)
        if reachable(paths.socket):
            return paths.socket
        service = installed_service() if use_service else None
        if service is not None:
            if reachable(service.socket):
                return service.socket
            if _ask_service_manager(service, reachable, deadline):
                return service.socket
        _spawn_and_wait(paths, deadline)
        return paths.socket
    finally:
        os.close(fd)


def _ask_service_manager(service: InstalledService, reachable: Callable[[Path], bool], deadline: float) -> bool:
    """True once the daemon started by the service manager answers; False (and a log line
    saying why) if the manager could not start it, so the caller starts one itself."""
    command = " ".join(service.start_command)
    try:
        done = subprocess.run(
            service.start_command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(0.1, min(SERVICE_MANAGER_TIMEOUT, deadline - time.monotonic())),
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.info("`%s` failed (%s); starting omnid directly", command, e)
        return False
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        last = why[-1] if why else "no output"
        log.info("`%s` exited %d (%s); starting omnid directly", command, done.returncode, last)
        return False
    while time.monotonic() < deadline:
        if reachable(service.socket):
            return True
        time.sleep(0.01)
    hint = "journalctl --user -u omnid" if service.manager == "systemd" else f"launchctl print gui/{os.getuid()}/…"
    raise Unavailable(f"`{command}` succeeded but omnid does not answer on {service.socket}; see {hint}")


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
