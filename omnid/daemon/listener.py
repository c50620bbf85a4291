"""The accept loop on the listening socket and the file descriptor budget: connections are
accepted only while ``FD_RESERVE`` descriptors stay free, and owner watches get ``PIDFD_SHARE``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import time

from ..jobs.reaper import Reaper
from .connection import Connection, ServerState

log = logging.getLogger("omnid.server")

FD_RESERVE = 32
"""File descriptors spent neither on connections nor on owner watches: SQLite, /proc and the
daemon's own files need some."""
PIDFD_SHARE = 0.5
"""The share of the file descriptors above ``FD_RESERVE`` (and those open at start) that
exit watches on owner processes (pidfds) may take; connections always keep the rest.
Owners past it are found dead by the periodic sweep instead of at once."""


class Listener:
    """Accepts connections while file descriptors last, keeping ``FD_RESERVE`` for the store
    and /proc (owner watches take at most ``PIDFD_SHARE`` of the rest); past that, new
    connections wait in the kernel's listen backlog
    until one closes. (asyncio's own server, out of fds, logs a traceback per queued
    connection every second.)"""

    def __init__(self, state: ServerState, reaper: Reaper, sock: socket.socket):
        self.state = state
        self.reaper = reaper
        self.loop = state.loop
        self.sock = sock
        sock.setblocking(False)
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.base_fds = _open_fd_count() - reaper.watcher.fds
        self.accepting = False
        self._starting: set[asyncio.Task[None]] = set()
        self.paused_at: float | None = None
        self._warned_at = float("-inf")
        self._retry: asyncio.TimerHandle | None = None
        self._resume()

    def fds_in_use(self) -> int:
        """An estimate that needs no syscall: what was open at start, plus each connection
        (accepted or being set up) and each exit watch on an owner (a pidfd)."""
        return self.base_fds + len(self._starting) + len(self.state.connections) + self.reaper.watcher.fds

    def has_room(self) -> bool:
        return self.fd_limit == resource.RLIM_INFINITY or self.fds_in_use() < self.fd_limit - FD_RESERVE

    def _accept(self) -> None:
        for _ in range(64):  # then let other work run; the socket stays readable
            if not self.has_room():
                self._pause(f"{self.fds_in_use()} of {self.fd_limit} file descriptors in use")
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause(str(e))
                    return
                log.warning("accept failed: %s", e)
                return
            task = self.loop.create_task(self._serve(conn))
            self._starting.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._starting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: Connection(self.state), conn)
        except OSError as e:
            log.warning("dropped a new connection: %s", e)
            conn.close()

    def _pause(self, why: str) -> None:
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False
        if self.paused_at is None:
            self.paused_at = now = time.monotonic()
            if now - self._warned_at > 60.0:  # overload flaps; once a minute is enough
                self._warned_at = now
                log.warning("not accepting new connections for now (%s); they wait in the queue", why)
        if self._retry is None:
            self._retry = self.loop.call_later(1.0, self._retry_fired)

    def _retry_fired(self) -> None:
        self._retry = None
        self._resume()

    def fd_freed(self) -> None:
        if not self.accepting and self.paused_at is not None and self.sock.fileno() >= 0:
            self._resume()

    def _resume(self) -> None:
        if self.sock.fileno() < 0 or self.accepting:
            return
        if self.paused_at is not None:
            if not self.has_room():
                self._pause("")
                return
            log.debug("accepting connections again after %.1fs", time.monotonic() - self.paused_at)
            self.paused_at = None
        self.loop.add_reader(self.sock.fileno(), self._accept)
        self.accepting = True

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False
        self.sock.close()


def pidfd_budget(fd_limit: int) -> int | None:
    """How many owner processes may get an exit watch (a pidfd): ``PIDFD_SHARE`` of the file
    descriptors neither open now nor in ``FD_RESERVE``. None: no limit."""
    if fd_limit == resource.RLIM_INFINITY:
        return None
    return max(0, int((fd_limit - _open_fd_count() - FD_RESERVE) * PIDFD_SHARE))


def _open_fd_count() -> int:
    for fd_dir in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(fd_dir))
    return 32
