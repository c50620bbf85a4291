"""Ending sessions whose owner process died: OS exit events (pidfd, kqueue) reap within
moments, and an identity sweep (run by the daemon's minute tick) is the safety net."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from typing import Callable

from omnid_client.errors import NotFound
from omnid_client.protocol import LastReap, ReapedSession, ReapResult

from ..identity import ProcessIdentity, ProcessInfo, is_alive, same_process
from ..store import Store, sessions as session_store
from ._timer import Timer
from .exits import WatcherMode, make_watcher

log = logging.getLogger("omnid.reaper")

RETRY_MIN = 1.0
"""Seconds before the first retry to end dead owners' sessions after a failed commit (doubling)."""


class Reaper:
    """Keeps one watch per live owner process and ends its sessions when it dies."""

    def __init__(
        self, store: Store, loop: asyncio.AbstractEventLoop, *, sweep_interval: float, max_fds: int | None = None
    ):
        """``max_fds``: most file descriptors to spend on exit watches (pidfds); owners past
        that are found dead by the sweep alone."""
        self.store = store
        self.loop = loop
        self.sweep_interval = sweep_interval
        self.watcher = make_watcher(loop, self._owner_exited, max_fds)
        self.owners: dict[ProcessIdentity, set[str]] = {}
        self._by_pid: dict[int, ProcessInfo] = {}
        """Each watched owner by pid, as ``known_owner`` answers (built once, not per call)."""
        self._uid = os.getuid()  # every session here was bound to a process of this user
        self.last_reap: LastReap | None = None
        self.on_reaped: Callable[[str, int, int], None] | None = None
        """Told, once committed, of each dead owner's sessions ended: how ("event" or "sweep"),
        nanoseconds since its death (for a sweep, at most: since the sweep before found it
        alive), and how many sessions (the daemon's metrics)."""
        self._swept_ns: int | None = None
        """When the last sweep that checked every owner ran (``perf_counter_ns``)."""
        self._retry = Timer(loop, self._retry_fired, "ending dead owners' sessions again", log)
        self._retry_delay = RETRY_MIN
        # After a lost batch: rebuild the watches, but end dead owners' sessions later; ending
        # them at once would fail the same way (a full disk) and spin.
        store.on_rollback(lambda: self.resync(end_dead=False))

    @property
    def mode(self) -> WatcherMode:
        return self.watcher.mode

    def start(self) -> ReapResult:
        """Check every live session left from before and watch the owners still running."""
        result = self.sweep(trigger="startup")
        self.resync()
        return result

    def set_interval(self, seconds: float) -> None:
        """The sweeps are ``seconds`` apart from now on (which also caps the retry delay)."""
        self.sweep_interval = seconds

    def stop(self) -> None:
        self._retry.cancel()
        self.watcher.close()
        self.owners.clear()
        self._by_pid.clear()

    # -- tracking ------------------------------------------------------------------

    def known_owner(self, pid: int) -> ProcessInfo | None:
        """A watched owner with this pid that is certainly still running, without a look
        at /proc: the fast path for calls from processes that already own a session."""
        known = self._by_pid.get(pid)
        if known is None or not self.watcher.running(known.identity):
            return None
        return known

    def alive(self, owner: ProcessIdentity) -> bool:
        """Whether that very process still runs (or cannot be inspected, which counts as alive).
        A watch is proof only for the process it was armed for: same pid, start and pidfd inode."""
        watched = self._by_pid.get(owner.pid)
        if watched is not None and same_process(owner, watched.identity) and self.watcher.running(watched.identity):
            return True
        return is_alive(owner)[0]

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
        self._by_pid[owner.pid] = ProcessInfo(owner, self._uid)
        return session_ids

    def _drop_owner(self, owner: ProcessIdentity) -> set[str]:
        """Forget ``owner`` (already watched or not); returns its session ids."""
        sessions = self.owners.pop(owner, set())
        known = self._by_pid.get(owner.pid)
        if known is not None and known.identity == owner:
            del self._by_pid[owner.pid]
        self.watcher.unwatch(owner)
        return sessions

    def resync(self, *, end_dead: bool = True) -> None:
        """Make the watches match the database's live sessions exactly, and end the sessions
        of owners found dead (now, or with ``end_dead=False`` in a retry a little later)."""
        wanted: dict[ProcessIdentity, set[str]] = {}
        for sid, _tool, owner in session_store.live_owned(self.store.db):
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
        if not self._retry.armed:
            self._retry.arm(self._retry_delay)
            self._retry_delay = min(self._retry_delay * 2, self.sweep_interval)

    def _retry_fired(self) -> None:
        self.resync()
        # A retry that failed before its transaction began (the database locked by another
        # process) has already scheduled the next one: the backoff must not start afresh.
        if not self._retry.armed:
            self.store.after_commit(self._retried)

    def _retried(self, error: Exception | None) -> None:
        if error is None:
            self._retry_delay = RETRY_MIN

    # -- reaping -------------------------------------------------------------------

    def _owner_exited(self, owner: ProcessIdentity) -> None:
        sessions = self._drop_owner(owner)
        if sessions:
            log.info("owner %d exited: reaping %d session(s)", owner.pid, len(sessions))
            self._end_sessions(sessions, "exit event", time.perf_counter_ns())

    def _end_sessions(self, session_ids: set[str], trigger: str, died_ns: int | None = None) -> None:
        try:
            with self.store.write() as db:
                ended = session_store.end(db, sorted(session_ids), "reaped", self.store.now())
        except sqlite3.Error as e:  # the batch was lost and resync() scheduled a retry
            log.warning("could not end %d session(s) of a dead owner: %s; will retry", len(session_ids), e)
            self._retry_later()
            return
        self.last_reap = LastReap(self.store.now(), trigger, len(ended))
        if died_ns is not None and ended:
            self._tell_reaped("event", died_ns, len(ended))

    def _tell_reaped(self, via: str, died_ns: int, sessions: int) -> None:
        on_reaped = self.on_reaped
        if on_reaped is None:
            return

        def committed(error: Exception | None) -> None:
            if error is None:
                on_reaped(via, time.perf_counter_ns() - died_ns, sessions)

        self.store.after_commit(committed)

    def sweep(self, *, trigger: str, dry_run: bool = False) -> ReapResult:
        """Check the owner of every live session against its recorded identity."""
        found: list[ReapedSession] = []
        dead_owners: set[ProcessIdentity] = set()
        checked: dict[ProcessIdentity, tuple[bool, str]] = {}
        for sid, tool, owner in session_store.live_owned(self.store.db):
            if owner not in checked:
                # An unfired exit watch is proof of life; only the others need /proc.
                checked[owner] = (True, "running") if self.watcher.running(owner) else is_alive(owner)
            alive, cause = checked[owner]
            if not alive:
                found.append(ReapedSession(sid, tool, owner.pid, cause))
                dead_owners.add(owner)
        now = self.store.now()
        alive_at, swept_ns = self._swept_ns, time.perf_counter_ns()
        if not dry_run:
            # Owners left to the sweep get an exit watch as soon as there is room again.
            for owner, (alive, _) in checked.items():
                if not self.watcher.has_room:
                    break
                if alive and owner in self.owners and not self.watcher.watching(owner):
                    self.watcher.watch(owner)
            if found:
                with self.store.write() as db:
                    session_store.end(db, [s.session_id for s in found], "reaped", now)
                for owner in dead_owners:
                    self._drop_owner(owner)
                log.info("%s sweep reaped %d session(s)", trigger, len(found))
                if alive_at is not None:  # not at startup: those owners died while omnid was down
                    self._tell_reaped("sweep", alive_at, len(found))
            self.last_reap = LastReap(now, trigger, len(found))
            self._swept_ns = swept_ns
        return ReapResult(dry_run, now, found)
