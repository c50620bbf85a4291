"""Ending live sessions whose owner omnid cannot check (no owner process recorded, or one
it is not allowed to inspect) after ``idle_expiry`` seconds without activity.

A session whose owner is verifiably alive is never expired; one whose owner died is the
reaper's.

Idleness is measured on the monotonic clock, so a wall-clock jump neither expires
sessions early nor keeps them forever: the (wall-clock) last activity a session has when
first seen is turned into a monotonic instant once, and activity seen later is placed
within the time since the previous look."""

from __future__ import annotations

import asyncio
import logging
import time

from .. import clock
from ..identity import ProcessIdentity, is_alive
from ..store import Store, sessions as session_store
from ._timer import Timer
from .reaper import Reaper

log = logging.getLogger("omnid.idle")

MIN_INTERVAL = 30.0
"""Timer-driven checks are at least this far apart, so the daemon stays asleep when idle."""
CLOCK_JUMP = 1.0
"""Seconds the wall clock may drift against the monotonic one between two looks (NTP
slewing) before that counts as a jump."""


class IdleExpiry:
    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, reaper: Reaper, idle_expiry: float = 0.0):
        self.store = store
        self.loop = loop
        self.reaper = reaper
        self.idle_expiry = idle_expiry
        self.expired = 0
        self._timer = Timer(loop, self.run, "expiring idle sessions", log)
        self._last_run = float("-inf")
        self._active: dict[str, tuple[float, float]] = {}
        """session id -> (its last_activity as last seen, that activity on the monotonic clock)"""
        self._looked: tuple[float, float] | None = None
        """(monotonic, wall) time of the previous look."""

    def configure(self, idle_expiry: float) -> None:
        """Apply a new setting now (0 turns expiry off)."""
        self.idle_expiry = idle_expiry
        self.run()

    def stop(self) -> None:
        self._timer.cancel()

    def _unchecked(self) -> list[tuple[str, float, ProcessIdentity | None]]:
        """(session id, last activity, owner) of every live session whose owner cannot be checked."""
        rows = self.store.db.execute(
            "SELECT session_id, last_activity, owner_pid, owner_start, boot_id, owner_ino FROM sessions "
            "WHERE ended_at IS NULL"
            + (
                ""
                if self.reaper.mode == "polling"
                else " AND (owner_pid IS NULL OR owner_start IS NULL OR boot_id IS NULL)"
            )
        ).fetchall()
        found: list[tuple[str, float, ProcessIdentity | None]] = []
        for sid, last, pid, start, boot, ino in rows:
            if pid is None or start is None or boot is None:
                found.append((sid, last, None))
                continue
            owner = ProcessIdentity(pid, start, boot, ino)
            if is_alive(owner)[1] == "cannot inspect":
                found.append((sid, last, owner))
        return found

    def run(self) -> list[str]:
        """End the sessions idle past the limit now; wake again when the next one is due."""
        self.stop()
        mono, wall = time.monotonic(), clock.wall()
        self._last_run = mono
        if self.idle_expiry <= 0:
            self._active.clear()
            self._looked = None
            return []
        due, next_due = [], None
        active: dict[str, tuple[float, float]] = {}
        for sid, last, owner in self._unchecked():
            at = self._active_at(sid, last, mono, wall)
            active[sid] = (last, at)
            deadline = at + self.idle_expiry
            if deadline <= mono:
                due.append((sid, owner))
            elif next_due is None or deadline < next_due:
                next_due = deadline
        self._active, self._looked = active, (mono, wall)
        ended: list[str] = []
        if due:
            with self.store.write() as db:
                ended = session_store.end(db, [sid for sid, _ in due], "expired", self.store.now())
            for sid, owner in due:
                self._active.pop(sid, None)
                if owner is not None:
                    self.reaper.untrack(sid, owner)
            self.expired += len(ended)
            log.info("expired %d session(s) idle for %gs whose owner cannot be checked", len(ended), self.idle_expiry)
        if next_due is not None:
            wait = max(next_due - mono, self._last_run + MIN_INTERVAL - mono, 0.0)
            self._timer.arm(wait)
        return ended

    def _active_at(self, sid: str, last: float, mono: float, wall: float) -> float:
        """When (monotonic) a session whose stored last activity is ``last`` was last active."""
        known = self._active.get(sid)
        if known is not None and known[0] == last:
            return known[1]
        age = max(0.0, wall - last)  # the wall clock is all there is for activity before the first look
        if self._looked is not None:
            # New or active since the previous look: at most that long ago, and just now if
            # the wall clock jumped meanwhile (its ``last`` may be on either side of it).
            since = mono - self._looked[0]
            jumped = abs((wall - self._looked[1]) - since) > CLOCK_JUMP
            age = 0.0 if jumped else min(age, since)
        return mono - age
