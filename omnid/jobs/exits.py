"""Noticing that owner processes exit, from the OS: a pidfd per process on Linux, kqueue
on macOS/BSD, and on other systems nothing (the reaper's periodic sweep finds them)."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import select
import sys
from typing import Callable, Literal, Protocol

from ..identity import ProcessIdentity, inspect, is_alive, same_process

log = logging.getLogger("omnid.reaper")

_MOST_EVENTS = 64
"""Most exits one look at all the pidfds returns (``PidfdWatcher.running``)."""

ExitCallback = Callable[[ProcessIdentity], None]
WatcherMode = Literal["pidfd", "kqueue", "polling"]


class ExitWatcher(Protocol):
    """What the reaper needs from a watcher, whichever the OS provides."""

    mode: WatcherMode

    @property
    def fds(self) -> int:
        """File descriptors held for exit watches (one per process with a pidfd)."""

    @property
    def max_fds(self) -> int | None:
        """Most file descriptors it may hold; None: no limit."""

    @property
    def has_room(self) -> bool:
        """Another process could get an exit watch now."""

    def watch(self, identity: ProcessIdentity) -> bool: ...

    def watching(self, identity: ProcessIdentity) -> bool:
        """Its exit is an event (not only found by the sweep)."""

    def running(self, identity: ProcessIdentity) -> bool: ...

    def unwatch(self, identity: ProcessIdentity) -> None: ...

    def close(self) -> None: ...


def _running(identity: ProcessIdentity) -> bool:
    """That process still runs (a look at /proc), for owners left to the sweep. Out of file
    descriptors /proc cannot say: it counts as running until the sweep's next look."""
    try:
        info = inspect(identity.pid)
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
        return True
    return info is not None and same_process(identity, info.identity)


def _left_to_sweep(identity: ProcessIdentity, error: OSError) -> bool:
    log.warning("cannot watch process %d (%s); the periodic sweep will notice its exit", identity.pid, error)
    return _running(identity)


class PidfdWatcher:
    """Linux: one pidfd per owner process, readable once that process has exited; at most
    ``max_fds`` of them, so owners cannot starve connections and the store of file
    descriptors. Owners past that are left to the periodic sweep (``watch`` still says
    whether they live)."""

    mode: WatcherMode = "pidfd"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: ExitCallback, max_fds: int | None = None):
        self._loop = loop
        self._on_exit = on_exit
        self._fds: dict[ProcessIdentity, int] = {}
        self.max_fds = max_fds
        self._warned_at = -math.inf
        self._exits = select.epoll()
        """Every watched pidfd, level-triggered: one look tells whether any owner has exited
        and is not yet unwatched (``running``), whatever the number of owners."""

    @property
    def fds(self) -> int:
        """File descriptors held (one per process with an exit watch)."""
        return len(self._fds)

    @property
    def has_room(self) -> bool:
        return self.max_fds is None or len(self._fds) < self.max_fds

    def watching(self, identity: ProcessIdentity) -> bool:
        """Its exit is an event (not only found by the sweep)."""
        return identity in self._fds

    def watch(self, identity: ProcessIdentity) -> bool:
        """Start watching; False if that process is already gone."""
        if identity in self._fds:
            return True
        if not self.has_room:
            now = self._loop.time()
            if now - self._warned_at > 3600.0:  # owners come and go at the limit: now and then is enough
                self._warned_at = now
                log.warning(
                    "%d owner processes have an exit watch (pidfd), the most this daemon's file descriptor "
                    "limit leaves room for; the exits of further owners are found by the periodic sweep",
                    len(self._fds),
                )
            return _running(identity)
        try:
            fd = os.pidfd_open(identity.pid)
        except ProcessLookupError:
            return False
        except OSError as e:  # out of file descriptors: the periodic sweep stands in
            return _left_to_sweep(identity, e)
        # The pid may have been reused before the pidfd was opened: check it is still ours.
        try:
            info = inspect(identity.pid)
        except OSError as e:  # the pidfd took the last descriptor: /proc gets it back, the sweep stands in
            os.close(fd)
            return _left_to_sweep(identity, e)
        if info is None or not same_process(identity, info.identity):
            os.close(fd)
            return False
        try:
            if self._exits.closed:  # watching again after close() (a resync while the daemon stops)
                self._exits = select.epoll()
            self._exits.register(fd, select.EPOLLIN)
        except OSError as e:  # no descriptor for a new epoll, or no kernel memory for the entry
            os.close(fd)
            return _left_to_sweep(identity, e)
        self._fds[identity] = fd
        self._loop.add_reader(fd, self._fired, identity)
        return True

    def running(self, identity: ProcessIdentity) -> bool:
        """Still running, known without reading /proc: its pidfd is not readable yet."""
        fd = self._fds.get(identity)
        if fd is None:
            return False
        # Asked on every reuse, so it must be cheap: one epoll_wait over all the pidfds (a
        # pidfd polls readable once its process exits), and none is readable almost always.
        # The look is made now, not trusted from the event loop's last one: an owner that
        # died since (say, just before its killer asked about it) has not been reaped yet.
        exited = self._exits.poll(0, _MOST_EVENTS)
        if not exited:
            return True
        if len(exited) < _MOST_EVENTS:
            return all(ready != fd for ready, _ in exited)
        poll = select.poll()  # more exits than one look returns: ask about this one alone
        poll.register(fd)  # (not select(): pidfds past FD_SETSIZE, 1024, are common)
        return not poll.poll(0)

    def unwatch(self, identity: ProcessIdentity) -> None:
        fd = self._fds.pop(identity, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            if not self._exits.closed:
                self._exits.unregister(fd)
            os.close(fd)

    def _fired(self, identity: ProcessIdentity) -> None:
        self.unwatch(identity)
        self._on_exit(identity)

    def close(self) -> None:
        for identity in list(self._fds):
            self.unwatch(identity)
        self._exits.close()


if sys.platform != "linux" and sys.platform != "win32":  # where select.kqueue exists

    class KqueueWatcher:
        """macOS/BSD: EVFILT_PROC NOTE_EXIT events on one kqueue."""

        mode: WatcherMode = "kqueue"
        fds = 0
        """One kqueue for every process: no file descriptor per watch."""
        max_fds = None
        has_room = True

        def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: ExitCallback, max_fds: int | None = None):
            self._loop = loop
            self._on_exit = on_exit
            self._kq = select.kqueue()
            self._by_pid: dict[int, ProcessIdentity] = {}
            loop.add_reader(self._kq.fileno(), self._drain)

        def watch(self, identity: ProcessIdentity) -> bool:
            event = select.kevent(
                identity.pid, select.KQ_FILTER_PROC, select.KQ_EV_ADD | select.KQ_EV_ONESHOT, select.KQ_NOTE_EXIT
            )
            try:
                self._kq.control([event], 0, 0)
            except ProcessLookupError:
                return False
            info = inspect(identity.pid)
            if info is None or not same_process(identity, info.identity):
                self.unwatch(identity)
                return False
            self._by_pid[identity.pid] = identity
            return True

        def watching(self, identity: ProcessIdentity) -> bool:
            return self._by_pid.get(identity.pid) == identity

        def running(self, identity: ProcessIdentity) -> bool:
            self._drain()
            return self._by_pid.get(identity.pid) == identity

        def unwatch(self, identity: ProcessIdentity) -> None:
            if self._by_pid.get(identity.pid) == identity:
                del self._by_pid[identity.pid]
            event = select.kevent(identity.pid, select.KQ_FILTER_PROC, select.KQ_EV_DELETE)
            try:
                self._kq.control([event], 0, 0)
            except OSError:
                pass

        def _drain(self) -> None:
            for event in self._kq.control(None, 256, 0):
                identity = self._by_pid.pop(event.ident, None)
                if identity is not None:
                    self._on_exit(identity)

        def close(self) -> None:
            self._loop.remove_reader(self._kq.fileno())
            self._kq.close()


class PollingWatcher:
    """No exit events on this OS: the periodic sweep finds dead owners."""

    mode: WatcherMode = "polling"
    fds = 0
    max_fds = None
    has_room = False

    def watch(self, identity: ProcessIdentity) -> bool:
        return is_alive(identity)[0]

    def watching(self, identity: ProcessIdentity) -> bool:
        return False

    def running(self, identity: ProcessIdentity) -> bool:
        return False  # unknown without a look at the process: callers inspect it

    def unwatch(self, identity: ProcessIdentity) -> None:
        pass

    def close(self) -> None:
        pass


def make_watcher(loop: asyncio.AbstractEventLoop, on_exit: ExitCallback, max_fds: int | None = None) -> ExitWatcher:
    if hasattr(os, "pidfd_open"):
        try:
            os.close(os.pidfd_open(os.getpid()))
            return PidfdWatcher(loop, on_exit, max_fds)
        except OSError:
            pass
    if sys.platform != "linux" and sys.platform != "win32" and hasattr(select, "kqueue"):
        return KqueueWatcher(loop, on_exit)
    return PollingWatcher()
