"""The composition root of ``omnid serve``: builds the store, jobs, handlers' context,
listener and housekeeping, starts and stops them in order, and reports the status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Literal

from omnid_client.paths import LAUNCHD_LABEL, Paths
from omnid_client.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR, DaemonStatus, Settings

from .. import __version__, api, clock
from ..config import Config, config_path, describe
from ..events import Hub
from ..jobs.compaction import Compactor
from ..jobs.embedder import Embedder
from ..jobs.expiry import Expirer
from ..jobs.idle import IdleExpiry
from ..jobs.reaper import Reaper
from ..jobs.retention import Archiver, retention_from_env
from ..jobs.workspace import Workspaces
from ..metrics import Metrics, enabled_from_env
from ..safefile import atomic_write, os_message
from ..store import CorruptDatabase, Store, sessions as session_store
from ..store.failures import set_aside
from ..store.similar import SimilarSearch
from . import systemd, upgrade
from .connection import ServerState, Timeouts
from .housekeeping import Housekeeping
from .instance import Instance, StartupError
from .listener import Listener, pidfd_budget
from .metrics_files import MetricsFiles, period_from_env

log = logging.getLogger("omnid.server")

SHUTDOWN_GRACE = 2.0
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)
"""Signals whose default action would end the daemon: each stops it gracefully, logged by
name. SIGHUP rereads the config file instead (the daemon convention)."""

DEFAULT_TIMEOUTS = Timeouts()
"""Frozen, so every App may share this one default."""


class App:
    """One run of the daemon, from ``serve()`` to its return."""

    # Built by serve(), in this order:
    loop: asyncio.AbstractEventLoop
    housekeeping: Housekeeping
    store: Store
    live_sessions: session_store.LiveLookups
    reaper: Reaper
    expirer: Expirer
    idle: IdleExpiry
    archiver: Archiver
    context: api.Context
    state: ServerState
    events: Hub
    workspaces: Workspaces
    metrics_files: MetricsFiles

    def __init__(
        self,
        instance: Instance,
        *,
        log_path: Path | None = None,
        log_target: str | None = None,
        config: Config | None = None,
        restart_argv: list[str] | None = None,
        log_level_fixed: bool = False,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ):
        self.instance = instance
        self.log_path = log_path
        self.log_target = log_target
        self.config = config if config is not None else Config(config_path())
        self.restart_argv = restart_argv or [sys.executable, "-m", "omnid", "serve"]
        self.log_level_fixed = log_level_fixed
        self.timeouts = timeouts
        self.started_at = clock.wall()
        self._started_mono = time.monotonic()
        self.set_aside: list[str] = []
        """Files of a corrupt database found at start and moved aside."""
        # OMNID_RETENTION, when set, overrides the config file's retention (for one-off runs).
        self._retention_override, self._retention_warning = retention_from_env()
        self.handover_socket: socket.socket | None = None
        self.listener: Listener | None = None
        self._stopped: asyncio.Event | None = None
        self.snapshot: Path | None = None
        """A copy of the running code, for a failed upgrade to fall back to."""
        self._snapshotting: asyncio.Future[Path | None] | None = None
        self.metrics = Metrics(enabled_from_env())

    @property
    def paths(self) -> Paths:
        return self.instance.paths

    @property
    def settings(self) -> Settings:
        """The settings in force (from the config file, or the defaults)."""
        return self.config.settings

    @property
    def sweep_interval(self) -> float:
        return self.timeouts.sweep or self.settings.sweep_interval

    @property
    def retention(self) -> float | None:
        """Seconds after which ended sessions are archived and deleted; None: kept forever."""
        if self._retention_override is not None or self._retention_warning:
            return self._retention_override
        return self.settings.retention or None

    @property
    def socket_inherited(self) -> bool:
        return self.instance.socket_inherited

    @property
    def restart_requested(self) -> bool:
        """An upgraded package imports cleanly: once stopped, this process becomes it."""
        return self.housekeeping.restart_requested

    async def serve(self, on_ready: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        fd_limit = _raise_fd_limit()
        imported = upgrade.files_stamp()
        upgrade.import_everything()
        self.housekeeping = Housekeeping(
            self.loop, self.instance, self.config,
            log_level_fixed=self.log_level_fixed, retention_fixed=self._retention_override is not None,
            sweep_fixed=self.timeouts.sweep is not None,
            serve_on=self._serve_on, stop=self.request_stop,
        )
        failure = upgrade.take_failure()
        if failure is not None:
            # Until the installed package changes again, this (old) code is what runs.
            self.housekeeping.upgrade_error = (
                f"the upgraded package ({upgrade.installed_version()}) failed before it was ready: {failure}; "
                f"running the previous code ({__version__}) from {upgrade.running_snapshot()}"
            )
            log.error("%s", self.housekeeping.upgrade_error)
        # Watch before anything can be seen from outside, so no change made once a client
        # can connect goes unnoticed.
        self.housekeeping.watch()
        settings = self.settings
        self.events = Hub(self.loop, self.paths.state_dir, settings)
        self.housekeeping.config_reloaded = self._config_reloaded
        self.store = self.open_store()
        self.events.attach(self.store)
        self.store.on_flushed = self.metrics.committed
        self.metrics_files = MetricsFiles(
            self.loop, self.metrics, lambda: self.settings, self.paths.state_dir / "metrics.json", period_from_env()
        )
        self.metrics_files.load_totals()
        self.live_sessions = session_store.LiveLookups(self.store)
        self.store.set_durability(settings.durability)
        self.store.guard.max_bytes = settings.max_database_bytes
        self.reaper = Reaper(self.store, self.loop, sweep_interval=self.sweep_interval, max_fds=pidfd_budget(fd_limit))
        self.reaper.on_reaped = self.metrics.reaped
        startup = self.reaper.start()
        self.expirer = Expirer(self.store, self.loop)
        self.expirer.start()
        self.idle = IdleExpiry(self.store, self.loop, self.reaper, settings.idle_expiry)
        self.idle.run()
        self.archiver = Archiver(
            self.store,
            self.loop,
            age=lambda: self.retention,
            archive_path=self.paths.state_dir / "archive.jsonl",
            protected=[self.paths.database, Path(f"{self.paths.database}-wal"), Path(f"{self.paths.database}-shm"),
                       self.paths.lock, self.paths.status_file],
        )
        self.store.flush()
        if startup.sessions:
            log.info("reaped %d session(s) whose owners died while omnid was down", len(startup.sessions))
        compactor = Compactor()
        self.workspaces = Workspaces(self.store, self.loop, lambda: self.settings, compactor)
        self.context = api.Context(
            self.store, self.store.guard, self.reaper, self.live_sessions, self.expirer, self.archiver,
            self.status, self.request_stop, lambda: self.settings,
            compactor=compactor, workspaces=self.workspaces,
            similar=SimilarSearch(self.paths.database, lambda: self.settings.vector_engine),
            embedder=Embedder(lambda: self.settings.embedding_model),
            metrics=self.metrics,
        )
        self.events.listeners.append(self.workspaces.committed)
        self.workspaces.start()
        self.store.on_rollback(self.context.compactor.forget)
        self.state = ServerState(self.loop, self.context, self.timeouts, self._connection_closed, events=self.events)
        self.metrics.gauges = lambda: (len(self.state.connections), len(self.reaper.owners), *self.store.file_sizes())
        if self.instance.listening_socket is None:
            self.instance.listening_socket = self.instance.bind()
        self.listener = Listener(self.state, self.reaper, self.instance.listening_socket)
        self.housekeeping.check_socket()  # a socket handed over by an upgrade may have lost its file meanwhile
        for sig in STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self._stop_signal, sig)
        if hasattr(signal, "SIGHUP"):
            self.loop.add_signal_handler(signal.SIGHUP, self._reload_signal)
        self.housekeeping.start(self.store, self.reaper, self.idle, self.archiver)
        self.housekeeping.on_tick.append(self.metrics_files.tick)
        self.metrics_files.configure()
        self.write_status_file()
        log.info(
            "omnid %s serving %s%s (pid %d, database %s, watcher %s, %d live session(s), config %s: %s)",
            __version__, self.paths.socket,
            f" (inherited from {self.instance.socket_source})" if self.socket_inherited else "",
            os.getpid(), self.paths.database, self.reaper.mode, session_store.count_live(self.store.db),
            self.config.path, self.config.state,
        )
        if self._retention_warning:
            log.warning("%s", self._retention_warning)
        if self.retention:
            log.info(
                "retention: ended sessions are archived to %s and deleted %gs after they end",
                self.archiver.archive_path, self.retention,
            )
        self.archiver.start()
        on_ready()
        # Only now: a copy taken before it is ready would be the code a failed start falls back to.
        self._snapshotting = self.loop.run_in_executor(None, upgrade.keep_snapshot, self.paths.state_dir, imported)
        systemd.notify("READY=1", f"STATUS=serving {self.paths.socket}", f"MAINPID={os.getpid()}")
        self.housekeeping.arm_watchdog()
        await self._stopped.wait()
        await self._shutdown()

    def open_store(self) -> Store:
        """The store; a corrupt database is moved aside (kept, never deleted), reported in the
        log and in ``daemon.status``, and replaced by a new, empty one."""
        try:
            return Store(self.paths.database, schedule=self.loop.call_soon, schedule_later=self.loop.call_later)
        except CorruptDatabase as e:
            moved = set_aside(self.paths.database)
            self.set_aside = [str(p) for p in moved]
            log.error(
                "%s; moved it aside to %s (kept for recovery) and started with a new, empty database",
                e, ", ".join(self.set_aside),
            )
        return Store(self.paths.database, schedule=self.loop.call_soon, schedule_later=self.loop.call_later)

    def _stop_signal(self, sig: int) -> None:
        log.warning("received %s: stopping", signal.Signals(sig).name)
        self.request_stop(f"signal {signal.Signals(sig).name}")

    def _config_reloaded(self, before: Settings, config: Config) -> None:
        self.events.config_reloaded(before, config)
        after = config.settings
        if (after.track_workspace, after.workspace_max_dirs) != (before.track_workspace, before.workspace_max_dirs):
            self.workspaces.configure()
        self.metrics_files.configure()

    def _reload_signal(self) -> None:
        """SIGHUP, as for most daemons: read the config file again (never stop)."""
        log.info("received SIGHUP: rereading the config file %s", self.config.path)
        self.housekeeping.reload_config()
        if self.config.error is None:
            log.info("settings in force: %s", describe(self.settings))

    def request_stop(self, why: str) -> None:
        log.info("stopping: %s", why)
        if self._stopped is not None:
            self.loop.call_soon(self._stopped.set)

    async def _shutdown(self) -> None:
        self.housekeeping.stop()
        if self._snapshotting is not None:
            try:
                self.snapshot = await self._snapshotting
            except Exception:
                log.exception("keeping a copy of the running code failed")
        if self.restart_requested:
            systemd.notify("RELOADING=1", "STATUS=restarting into the upgraded package")
            assert self.instance.listening_socket is not None
            self.handover_socket = self.instance.listening_socket.dup()  # closing the server must not close it
        else:
            systemd.notify("STOPPING=1", "STATUS=stopping")
        if self.listener is not None:
            self.listener.close()
        self.store.flush()
        for conn in list(self.state.connections):
            if conn.transport is not None:
                conn.transport.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.reaper.stop()
        self.expirer.stop()
        self.archiver.stop()
        self.idle.stop()
        self.workspaces.stop()
        if self.context.similar is not None:
            self.context.similar.close()
        if self.context.embedder is not None:
            self.context.embedder.close()
        self.store.close()
        await self.metrics_files.close()
        self.events.close()
        if not self.restart_requested:
            self.instance.release()
        log.info("restarting" if self.restart_requested else "stopped")

    def _serve_on(self, sock: socket.socket) -> None:
        old, self.listener = self.listener, Listener(self.state, self.reaper, sock)
        if old is not None:
            old.close()  # its socket file is gone: nobody new can reach it

    def _connection_closed(self) -> None:
        if self.listener is not None:
            self.listener.fd_freed()

    # -- status --------------------------------------------------------------------

    @property
    def managed_by(self) -> Literal["systemd", "launchd"] | None:
        if self.instance.socket_source == "launchd":
            return "launchd"
        if self.socket_inherited or os.environ.get("NOTIFY_SOCKET") or systemd.started_by_systemd():
            return "systemd"
        if os.environ.get("XPC_SERVICE_NAME") == LAUNCHD_LABEL:
            return "launchd"
        return None

    def write_status_file(self) -> None:
        status = {
            "pid": os.getpid(),
            "version": __version__,
            "protocol": f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            "socket": str(self.paths.socket),
            "database": str(self.paths.database),
            "log": str(self.log_path) if self.log_path else None,
            "log_target": self.log_target,
            "config": str(self.config.path),
            "started_at": self.started_at,
        }
        try:
            with atomic_write(self.paths.status_file, owned=True) as pending:
                pending.file.write(json.dumps(status, indent=2).encode() + b"\n")
        except OSError as e:
            raise StartupError(f"cannot write the status file {self.paths.status_file}: {os_message(e)}") from None

    def status(self) -> DaemonStatus:
        db_bytes, wal_bytes = self.store.file_sizes()
        return DaemonStatus(
            pid=os.getpid(),
            version=__version__,
            protocol=f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            started_at=self.started_at,
            uptime=time.monotonic() - self._started_mono,  # a wall-clock jump does not change it
            home=str(self.paths.state_dir),
            socket=str(self.paths.socket),
            database=str(self.paths.database),
            database_bytes=db_bytes,
            wal_bytes=wal_bytes,
            schema_version=self.store.schema_version(),
            log=str(self.log_path) if self.log_path else None,
            watcher=self.reaper.mode,
            live_sessions=session_store.count_live(self.store.db),
            watched_processes=len(self.reaper.owners),
            pidfd_watches=self.reaper.watcher.fds if self.reaper.mode == "pidfd" else None,
            pidfd_budget=self.reaper.watcher.max_fds,
            database_used_bytes=self.store.guard.used_bytes,
            database_quota=self.store.guard.max_bytes or None,
            storage_error=str(refusal) if (refusal := self.store.guard.refusal(grows=True)) is not None else None,
            connections=len(self.state.connections),
            last_reap=self.reaper.last_reap,
            retention=self.archiver.status(),
            socket_source=self.instance.socket_source,
            managed_by=self.managed_by,
            log_target=self.log_target,
            config_path=str(self.config.path),
            config_state=self.config.state,
            config_error=self.config.error,
            embedding_model_error=self.context.embedder.error if self.context.embedder is not None else None,
            config_loaded_at=self.config.loaded_at,
            settings=self.settings,
            synchronous=self.store.durability(),
            upgrade_error=self.housekeeping.upgrade_error,
            set_aside=self.set_aside,
            subscribers=len(self.events.subscribers),
            event_seq=self.events.head,
            tracked_roots=self.workspaces.watching,
        )


def _raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (as far as allowed); returns the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
