"""Ending sessions whose owner process died: OS exit events (pidfd, kqueue) reap within
moments, and a periodic identity sweep is the safety net."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import select
import sqlite3
import sys
from typing import Callable

from omnid_client.errors import NotFound
from omnid_client.protocol import LastReap, ReapedSession, ReapResult

from .identity import ProcessIdentity, ProcessInfo, inspect, is_alive
from .store import Store
from .store import sessions as q

log = logging.getLogger("omnid.reaper")

ExitCallback = Callable[[ProcessIdentity], None]

RETRY_MIN = 1.0
"""Seconds before the first retry to end dead owners' sessions after a failed commit (doubling)."""


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
            return info is not None and info.identity == identity
        # The pid may have been reused before the pidfd was opened: check it is still ours.
        info = inspect(identity.pid)
        if info is None or info.identity != identity:
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
        if info is None or info.identity != identity:
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


def make_watcher(loop: asyncio.AbstractEventLoop, on_exit: ExitCallback):
    if hasattr(os, "pidfd_open"):
        try:
            os.close(os.pidfd_open(os.getpid()))
            return PidfdWatcher(loop, on_exit)
        except OSError:
            pass
    if hasattr(select, "kqueue") and sys.platform != "win32":
        return KqueueWatcher(loop, on_exit)
    return PollingWatcher(loop, on_exit)


class Reaper:
    """Keeps one watch per live owner process and ends its sessions when it dies."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, sweep_interval: float = 60.0):
        self.store = store
        self.loop = loop
        self.sweep_interval = sweep_interval
        self.watcher = make_watcher(loop, self._owner_exited)
        self.owners: dict[ProcessIdentity, set[str]] = {}
        self._by_pid: dict[int, ProcessIdentity] = {}
        self._uid = os.getuid()  # every session here was bound to a process of this user
        self.last_reap: LastReap | None = None
        self.periodic: list[Callable[[], None]] = []
        """Other checks that ride on the sweep timer, so an idle daemon wakes only for it."""
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_MIN
        # After a lost batch: rebuild the watches, but end dead owners' sessions later; ending
        # them at once would fail the same way (a full disk) and spin.
        store.on_rollback(lambda: self.resync(end_dead=False))

    @property
    def mode(self) -> str:
        return self.watcher.mode

    def start(self) -> ReapResult:
        """Check every live session left from before and watch the owners still running."""
        result = self.sweep(trigger="startup")
        self.resync()
        self._arm_timer()
        return result

    def set_interval(self, seconds: float) -> None:
        """Sweep every ``seconds`` from now on (the next sweep is rescheduled)."""
        if seconds == self.sweep_interval:
            return
        self.sweep_interval = seconds
        if self._timer is not None:
            self._timer.cancel()
            self._arm_timer()

    def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.watcher.close()
        self.owners.clear()
        self._by_pid.clear()

    # -- tracking ------------------------------------------------------------------

    def known_owner(self, pid: int) -> ProcessInfo | None:
        """A watched owner with this pid that is certainly still running, without a look
        at /proc: the fast path for calls from processes that already own a session."""
        owner = self._by_pid.get(pid)
        if owner is None or not self.watcher.running(owner):
            return None
        return ProcessInfo(owner, self._uid)

    def track(self, session_id: str, owner: ProcessIdentity) -> None:
        """Watch ``owner`` for ``session_id``; NotFound if that process is already gone."""
        sessions = self.owners.get(owner)
        if sessions is None:
            if not self.watcher.watch(owner):
                raise NotFound(f"process {owner.pid} exited", {"field": "pid"})
            sessions = self._add_owner(owner, set())
        sessions.add(session_id)

    def untrack(self, session_id: str, owner: ProcessIdentity) -> None:
        sessions = self.owners.get(owner)
        if sessions is None:
            return
        sessions.discard(session_id)
        if not sessions:
            self._drop_owner(owner)

    def _add_owner(self, owner: ProcessIdentity, session_ids: set[str]) -> set[str]:
        self.owners[owner] = session_ids
        self._by_pid[owner.pid] = owner
        return session_ids

    def _drop_owner(self, owner: ProcessIdentity) -> set[str]:
        """Forget ``owner`` (already watched or not); returns its session ids."""
        sessions = self.owners.pop(owner, set())
        if self._by_pid.get(owner.pid) == owner:
            del self._by_pid[owner.pid]
        self.watcher.unwatch(owner)
        return sessions

    def resync(self, *, end_dead: bool = True) -> None:
        """Make the watches match the database's live sessions exactly, and end the sessions
        of owners found dead (now, or with ``end_dead=False`` in a retry a little later)."""
        wanted: dict[ProcessIdentity, set[str]] = {}
        for sid, _tool, owner in q.live_owned(self.store.db):
            wanted.setdefault(owner, set()).add(sid)
        for owner in list(self.owners):
            if owner not in wanted:
                self._drop_owner(owner)
        dead = []
        for owner, sids in wanted.items():
            if owner in self.owners:
                self.owners[owner] = sids
            elif self.watcher.watch(owner):
                self._add_owner(owner, sids)
            else:
                dead.append(owner)
        if dead and not end_dead:
            self._retry_later()
            return
        for owner in dead:
            self._end_sessions(wanted[owner], "resync")

    def _retry_later(self) -> None:
        if self._retry is None:
            self._retry = self.loop.call_later(self._retry_delay, self._retry_fired)
            self._retry_delay = min(self._retry_delay * 2, self.sweep_interval)

    def _retry_fired(self) -> None:
        self._retry = None
        self.resync()
        # A retry that failed before its transaction began (the database locked by another
        # process) has already scheduled the next one: the backoff must not start afresh.
        if self._retry is None:
            self.store.after_commit(self._retried)

    def _retried(self, error: Exception | None) -> None:
        if error is None:
            self._retry_delay = RETRY_MIN

    # -- reaping -------------------------------------------------------------------

    def _owner_exited(self, owner: ProcessIdentity) -> None:
        sessions = self._drop_owner(owner)
        if sessions:
            log.info("owner %d exited: reaping %d session(s)", owner.pid, len(sessions))
            self._end_sessions(sessions, "exit event")

    def _end_sessions(self, session_ids: set[str], trigger: str) -> None:
        try:
            with self.store.write() as db:
                ended = q.end(db, sorted(session_ids), "reaped", self.store.now())
        except sqlite3.Error as e:  # the batch was lost and resync() scheduled a retry
            log.warning("could not end %d session(s) of a dead owner: %s; will retry", len(session_ids), e)
            self._retry_later()
            return
        self.last_reap = LastReap(self.store.now(), trigger, len(ended))

    def sweep(self, *, trigger: str = "sweep", dry_run: bool = False) -> ReapResult:
        """Check the owner of every live session against its recorded identity."""
        found: list[ReapedSession] = []
        dead_owners: dict[ProcessIdentity, str] = {}
        checked: dict[ProcessIdentity, tuple[bool, str]] = {}
        for sid, tool, owner in q.live_owned(self.store.db):
            if owner not in checked:
                # An unfired exit watch is proof of life; only the others need /proc.
                checked[owner] = (True, "running") if self.watcher.running(owner) else is_alive(owner)
            alive, cause = checked[owner]
            if not alive:
                found.append(ReapedSession(sid, tool, owner.pid, cause))
                dead_owners[owner] = cause
        now = self.store.now()
        if not dry_run:
            if found:
                with self.store.write() as db:
                    q.end(db, [s.session_id for s in found], "reaped", now)
                for owner in dead_owners:
                    self._drop_owner(owner)
                log.info("%s sweep reaped %d session(s)", trigger, len(found))
            self.last_reap = LastReap(now, trigger, len(found))
        return ReapResult(dry_run, now, found)

    def _arm_timer(self) -> None:
        # Jitter keeps many users' daemons from waking in step.
        delay = self.sweep_interval * random.uniform(0.9, 1.1)
        self._timer = self.loop.call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        try:
            self.sweep(trigger="sweep")
        except Exception:
            log.exception("periodic sweep failed")
        for check in self.periodic:
            try:
                check()
            except Exception:
                log.exception("periodic check %s failed", getattr(check, "__name__", check))
        self._arm_timer()
