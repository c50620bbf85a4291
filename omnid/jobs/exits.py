"""Noticing that owner processes exit, from the OS: a pidfd per process on Linux, kqueue
on macOS/BSD, and on other systems nothing (the reaper's periodic sweep finds them)."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
from typing import Callable, Protocol

from ..identity import ProcessIdentity, inspect, is_alive, same_process

log = logging.getLogger("omnid.reaper")

ExitCallback = Callable[[ProcessIdentity], None]


class ExitWatcher(Protocol):
    """What the reaper needs from a watcher, whichever the OS provides."""

    mode: str

    def watch(self, identity: ProcessIdentity) -> bool: ...

    def running(self, identity: ProcessIdentity) -> bool: ...

    def unwatch(self, identity: ProcessIdentity) -> None: ...

    def close(self) -> None: ...


class PidfdWatcher:
    """Linux: one pidfd per owner process, readable once that process has exited."""

    mode = "pidfd"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: ExitCallback):
        self._loop = loop
        self._on_exit = on_exit
        self._fds: dict[ProcessIdentity, int] = {}

    def watch(self, identity: ProcessIdentity) -> bool:
        """Start watching; False if that process is already gone."""
        try:
            fd = os.pidfd_open(identity.pid)
        except ProcessLookupError:
            return False
        except OSError as e:  # out of file descriptors: the periodic sweep stands in
            log.warning("cannot watch process %d (%s); the periodic sweep will notice its exit", identity.pid, e)
            info = inspect(identity.pid)
            return info is not None and same_process(identity, info.identity)
        # The pid may have been reused before the pidfd was opened: check it is still ours.
        info = inspect(identity.pid)
        if info is None or not same_process(identity, info.identity):
            os.close(fd)
            return False
        self._fds[identity] = fd
        self._loop.add_reader(fd, self._fired, identity)
        return True

    def running(self, identity: ProcessIdentity) -> bool:
        """Still running, known without reading /proc: its pidfd is not readable yet."""
        fd = self._fds.get(identity)
        return fd is not None and not select.select([fd], [], [], 0)[0]

    def unwatch(self, identity: ProcessIdentity) -> None:
        fd = self._fds.pop(identity, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def _fired(self, identity: ProcessIdentity) -> None:
        self.unwatch(identity)
        self._on_exit(identity)

    def close(self) -> None:
        for identity in list(self._fds):
            self.unwatch(identity)


if sys.platform != "linux" and sys.platform != "win32":  # where select.kqueue exists

    class KqueueWatcher:
        """macOS/BSD: EVFILT_PROC NOTE_EXIT events on one kqueue."""

        mode = "kqueue"

        def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: ExitCallback):
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

    mode = "polling"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: ExitCallback):
        pass

    def watch(self, identity: ProcessIdentity) -> bool:
        return is_alive(identity)[0]

    def running(self, identity: ProcessIdentity) -> bool:
        return False  # unknown without a look at the process: callers inspect it

    def unwatch(self, identity: ProcessIdentity) -> None:
        pass

    def close(self) -> None:
        pass


def make_watcher(loop: asyncio.AbstractEventLoop, on_exit: ExitCallback) -> ExitWatcher:
    if hasattr(os, "pidfd_open"):
        try:
            os.close(os.pidfd_open(os.getpid()))
            return PidfdWatcher(loop, on_exit)
        except OSError:
            pass
    if sys.platform != "linux" and sys.platform != "win32" and hasattr(select, "kqueue"):
        return KqueueWatcher(loop, on_exit)
    return PollingWatcher(loop, on_exit)
