"""``omnid serve``: claim the home (lock, socket adoption, take-over from a daemon started
without the service manager), then run the ``App`` until it stops, or re-exec after an upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from omnid_client.paths import PathError, Paths, read_status_file

from ..config import Config, config_path
from ..store import StoreError
from . import launchd, logs, systemd, upgrade
from .app import App
from .connection import Timeouts
from .instance import AlreadyRunning, Instance, StartupError

log = logging.getLogger("omnid.server")

TAKEOVER_TIMEOUT = 10.0
EXIT_ALREADY_RUNNING = 4
"""``omnid serve`` run by hand while a daemon already serves this home (under a service
manager it exits 0 instead, so that ``Restart=on-failure`` or ``KeepAlive`` leaves it be)."""


def run(
    paths: Paths,
    *,
    log_path: Path | None,
    ready_fd: int | None,
    log_target: str | None = None,
    restart_argv: list[str] | None = None,
    log_level_fixed: bool = False,
    announce: Callable[[str], object] | None = None,
) -> int:
    """Run a daemon until it is told to stop; the exit status for ``omnid serve``. After
    an upgrade it does not return: the process becomes the new daemon. ``announce`` gets
    the one readiness line (``ready PID``, ``running PID`` or ``error WHY``) the ready fd gets."""

    def report(line: str) -> None:
        nonlocal ready_fd, announce
        if announce is not None:
            announce(line)
            announce = None
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            ready_fd = None

    try:
        timeouts = Timeouts.from_env()
    except StartupError as e:
        print(f"omnid: cannot start: {e}", file=sys.stderr)
        report(f"error {e}")
        return 1
    if hasattr(signal, "SIGHUP"):
        # Until the event loop handles it (a config reload), a SIGHUP must not kill the
        # daemon silently; the file is read during startup anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    handover = upgrade.take_handover()
    inherited, manager = systemd.listen_fds(), "systemd"
    if not inherited:
        inherited, manager = launchd.listen_fds(), "launchd"
    config = Config(config_path())
    config.load()
    if not log_level_fixed:
        logs.set_level(config.settings.log_level)
    instance = Instance(paths)
    app = App(
        instance, log_path=log_path, log_target=log_target, config=config,
        restart_argv=restart_argv, log_level_fixed=log_level_fixed, timeouts=timeouts,
    )
    try:
        if len(inherited) > 1:
            raise StartupError(f"{len(inherited)} sockets were passed in; omnid.socket must have one ListenStream=")
        if inherited:
            instance.adopt_socket(inherited[0], owner=handover[1] if handover else manager)
        else:
            instance.check_paths()
        if handover:
            instance.adopt_lock(handover[0])
        elif instance.socket_inherited:
            _take_over(instance)
        else:
            instance.acquire_lock()
    except AlreadyRunning as e:
        print(f"omnid: {e}; not starting a second one", file=sys.stderr)
        report(f"running {e.pid or 0}")
        return 0 if systemd.started_by_systemd() or launchd.started_by_launchd() else EXIT_ALREADY_RUNNING
    except (OSError, ValueError, PathError, StartupError) as e:
        print(f"omnid: cannot start: {e}", file=sys.stderr)
        report(f"error {e}")
        return 1
    try:
        asyncio.run(app.serve(lambda: report(f"ready {os.getpid()}")))
    except Exception as e:
        expected = isinstance(e, (StartupError, StoreError, PathError, OSError))
        log.error("cannot start: %s", e, exc_info=not expected)
        print(f"omnid: cannot start: {e}", file=sys.stderr)
        report(f"error {e}")
        instance.release()
        return 1
    if app.restart_requested and app.handover_socket is not None:
        owner = instance.socket_source if instance.socket_inherited else "own"
        upgrade.exec_handover(instance.lock_fd, app.handover_socket, owner, app.restart_argv, app.snapshot)
    return 0


def _take_over(instance: Instance) -> None:
    """Under socket activation, the service manager's daemon is the one to keep: a daemon a
    client started on its own is asked to stop, and its lock awaited."""
    try:
        instance.acquire_lock()
        return
    except AlreadyRunning as e:
        holder = e
    from omnid_client import Client, OmnidError

    published = read_status_file(instance.paths.state_dir).get("socket")
    if isinstance(published, str) and published and Path(published) != instance.paths.socket:
        log.info("another omnid (pid %s) serves %s: asking it to stop", holder.pid, published)
        with contextlib.suppress(OmnidError):
            with Client(published, autostart=False, timeout=5.0) as other:
                other.shutdown()
    deadline = time.monotonic() + TAKEOVER_TIMEOUT
    while True:
        try:
            instance.acquire_lock()
            return
        except AlreadyRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
