"""The daemon's upkeep between requests: the minute tick (the reaper's safety-net sweep,
idle expiry and the checks below), and debounced file watches that reload the config,
re-bind a lost socket, re-exec into an upgraded package; and systemd's watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import sys
from typing import Callable

from omnid_client.paths import PathError
from omnid_client.protocol import Settings

from .. import __version__
from ..config import Config
from ..jobs import Timer
from ..jobs.idle import IdleExpiry
from ..jobs.reaper import Reaper
from ..jobs.retention import Archiver
from ..store import Store
from . import logs, systemd, upgrade
from .instance import Instance, StartupError
from .watch import DirWatcher

log = logging.getLogger("omnid.server")

PREFLIGHT_TIMEOUT = 60.0
PACKAGE_SETTLE = 1.0
"""Seconds without further changes to the installed package before it is checked: an
upgrade rewrites many files."""


class Housekeeping:
    """Watches files from ``watch()`` on, and ticks and applies settings to the jobs from ``start()`` on."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        instance: Instance,
        config: Config,
        *,
        log_level_fixed: bool,
        retention_fixed: bool,
        sweep_fixed: bool,
        serve_on: Callable[[socket.socket], None],
        stop: Callable[[str], None],
    ):
        self.loop = loop
        self.instance = instance
        self.config = config
        self.log_level_fixed = log_level_fixed
        self.retention_fixed = retention_fixed
        """OMNID_RETENTION overrides the config file's retention (for one-off runs)."""
        self.sweep_fixed = sweep_fixed
        """OMNID_SWEEP_INTERVAL overrides the config file's sweep_interval (for one-off runs and tests)."""
        self._serve_on = serve_on
        self._stop = stop
        self.config_reloaded: Callable[[Settings, Config], None] | None = None
        """Told each time the config file was read again (the event hub)."""
        self.store: Store | None = None
        self.reaper: Reaper | None = None
        self.idle: IdleExpiry | None = None
        self.archiver: Archiver | None = None
        self.watcher: DirWatcher | None = None
        self.stopping = False
        self.upgrade_error: str | None = None
        self.restart_requested = False
        self.fingerprint: upgrade.Fingerprint = ()
        self._rejected_fingerprint: upgrade.Fingerprint | None = None
        self._preflight: asyncio.Task[None] | None = None
        self._package_names: set[str] = set()
        self._tick = Timer(loop, self._tick_fired, "minute tick", log)
        self._checks = {
            "config": Timer(loop, self.reload_config, "config check", log),
            "socket": Timer(loop, self.check_socket, "socket check", log),
            "package": Timer(loop, self.check_package, "package check", log),
        }
        self._watchdog: Timer | None = None
        self.on_tick: list[Callable[[], None]] = []
        """Also run at each minute tick (saving the metrics totals)."""

    def watch(self) -> None:
        """Note the installed package and arm the file watches."""
        self.fingerprint = upgrade.fingerprint()
        self.watcher = DirWatcher(self.loop)
        self._watch_files()

    def start(self, store: Store, reaper: Reaper, idle: IdleExpiry, archiver: Archiver) -> None:
        """Tick from now on, and apply config changes to these jobs."""
        self.store, self.reaper, self.idle, self.archiver = store, reaper, idle, archiver
        self._arm_tick()
        self.check_config_file()  # changed since it was read, before the watch was armed?

    def stop(self) -> None:
        self.stopping = True
        for timer in [self._tick, self._watchdog, *self._checks.values()]:
            if timer is not None:
                timer.cancel()
        if self._preflight is not None:
            self._preflight.cancel()
        if self.watcher is not None:
            self.watcher.close()

    # -- the minute tick ------------------------------------------------------------------

    def _arm_tick(self) -> None:
        assert self.reaper is not None
        # Jitter keeps many users' daemons from waking in step.
        self._tick.arm(self.reaper.sweep_interval * random.uniform(0.9, 1.1))

    def _tick_fired(self) -> None:
        """Every ``sweep_interval``: the one timer an idle daemon wakes for."""
        assert self.reaper is not None and self.idle is not None
        try:
            self.reaper.sweep(trigger="sweep")
        except Exception:
            log.exception("periodic sweep failed")
        checks = (
            self.check_config_file, self.check_socket, self.check_package, self.idle.run, self.check_database,
            *self.on_tick,
        )
        for check in checks:
            try:
                check()
            except Exception:
                log.exception("periodic check %s failed", getattr(check, "__name__", check))
        self._arm_tick()

    # -- watching files ----------------------------------------------------------------

    def _later(self, key: str, delay: float) -> None:
        """Run check ``key`` once, ``delay`` seconds after the last of a burst of events."""
        if not self.stopping:
            self._checks[key].arm(delay)

    def _watch_files(self) -> None:
        """(Re)arm the kernel watches: config dir, socket dir, installed package."""
        assert self.watcher is not None
        config_dir = self.config.path.parent
        with contextlib.suppress(OSError):
            os.makedirs(config_dir, mode=0o700, exist_ok=True)
        self.watcher.watch(config_dir, self._config_dir_changed)
        if not self.instance.socket_inherited:
            self.watcher.watch(self.instance.paths.socket.parent, self._socket_dir_changed)
        self._package_names = {"omnid", "omnid_client"}
        for directory in upgrade.watch_dirs():
            self._package_names.add(directory.name)
            self.watcher.watch(directory, self._package_changed)

    def _config_dir_changed(self, names: set[str] | None) -> None:
        if self.idle is None:
            return  # still starting: checked once the daemon is up
        if names is None or self.config.path.name in names:
            self._later("config", 0.2)

    def _socket_dir_changed(self, names: set[str] | None) -> None:
        if self.instance.listening_socket is None:
            return
        if names is None or self.instance.paths.socket.name in names:
            self._later("socket", 0.05)

    def _package_changed(self, names: set[str] | None) -> None:
        if self.idle is None:
            return
        if names is None or any(
            n.endswith(".py") or n in self._package_names or n.startswith("omnid") for n in names
        ):
            self._later("package", PACKAGE_SETTLE)

    # -- config -------------------------------------------------------------------------

    def reload_config(self) -> None:
        """Read the config file again and apply what changed; an invalid file changes nothing."""
        before = self.config.settings
        if self.config.load():
            self.apply_settings(before, self.config.settings)
        if self.config_reloaded is not None:
            self.config_reloaded(before, self.config)
        if self.watcher is not None:
            self._watch_files()  # the config dir may have been created or replaced

    def check_config_file(self) -> None:
        if self.config.changed_on_disk():
            self.reload_config()

    def apply_settings(self, old: Settings, new: Settings) -> None:
        assert self.store is not None and self.reaper is not None
        assert self.idle is not None and self.archiver is not None
        if new.sweep_interval != old.sweep_interval and not self.sweep_fixed:
            self.reaper.set_interval(new.sweep_interval)
            self._arm_tick()  # the next tick is due by the new interval
        if new.durability != old.durability:
            self.store.set_durability(new.durability)
        if new.max_database_bytes != old.max_database_bytes:
            self.store.guard.max_bytes = new.max_database_bytes
        if new.log_level != old.log_level and not self.log_level_fixed:
            logs.set_level(new.log_level)
        if new.idle_expiry != old.idle_expiry:
            self.idle.configure(new.idle_expiry)
        if new.retention != old.retention and not self.retention_fixed:
            self.archiver.reschedule()

    # -- the database file ---------------------------------------------------------------

    def check_database(self) -> None:
        """Is the database file still the one open, and how full is it? (Also looked at
        before each commit, at most once a second.)"""
        assert self.store is not None
        self.store.guard.check(force=True)

    # -- the socket ---------------------------------------------------------------------

    def check_socket(self) -> None:
        """Bind the socket path again if its file was deleted or replaced (never systemd's)."""
        if self.instance.socket_inherited or self.stopping or self.instance.listening_socket is None:
            return
        path = self.instance.paths.socket
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            log.warning("cannot check socket %s: %s", path, e)
            return
        if st is not None and (st.st_dev, st.st_ino) == self.instance.socket_inode:
            return
        what = "deleted" if st is None else "replaced"
        try:
            sock = self.instance.bind()
        except (StartupError, PathError, OSError) as e:
            log.error(
                "socket %s was %s and cannot be bound again (%s); stopping, as no client can reach this daemon",
                path, what, e,
            )
            self._stop(f"socket {what}")
            return
        log.warning("socket %s was %s; bound it again", path, what)
        self.instance.listening_socket = sock
        self._serve_on(sock)
        if self.watcher is not None:
            self._watch_files()

    # -- upgrades ----------------------------------------------------------------------

    def check_package(self) -> None:
        """Restart into the installed package if it changed and imports cleanly."""
        if self.stopping or self._preflight is not None:
            return
        if self.watcher is not None:
            self._watch_files()  # an upgrade may have replaced the watched directories
        current = upgrade.fingerprint()
        if current == self.fingerprint or current == self._rejected_fingerprint:
            return
        self._preflight = self.loop.create_task(self._restart_if_importable(current))

    async def _restart_if_importable(self, seen: upgrade.Fingerprint) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", upgrade.PREFLIGHT,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(), PREFLIGHT_TIMEOUT)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                out, err = b"", f"importing it took over {PREFLIGHT_TIMEOUT:g}s".encode()
        finally:
            self._preflight = None
        if upgrade.fingerprint() != seen:  # still being written: look again once it settles
            self._later("package", PACKAGE_SETTLE)
            return
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            last_line = lines[-1] if lines else proc.returncode
            self.upgrade_error = f"the installed package changed but does not import: {last_line}"
            self._rejected_fingerprint = seen
            log.error("%s; still running %s", self.upgrade_error, __version__)
            return
        new_version = out.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        log.info("the installed package changed (%s -> %s): restarting into it", __version__, new_version[0])
        self.restart_requested = True
        self._stop("installed package changed")

    # -- systemd -----------------------------------------------------------------------

    def arm_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return

        def ping() -> None:
            systemd.notify("WATCHDOG=1")
            watchdog.arm(interval)

        watchdog = self._watchdog = Timer(self.loop, ping, "watchdog ping", log)
        watchdog.arm(interval)
