"""Ending live sessions whose owner omnid cannot check (no owner process recorded, or one
it is not allowed to inspect) after ``idle_expiry`` seconds without activity. A session
whose owner is verifiably alive is never expired; one whose owner died is the reaper's."""

from __future__ import annotations

import asyncio
import logging
import time

from ..identity import ProcessIdentity, is_alive
from .reaper import Reaper
from ..store import Store
from ..store import sessions as session_store
from ._timer import Timer

log = logging.getLogger("omnid.idle")

MIN_INTERVAL = 30.0
"""Timer-driven checks are at least this far apart, so the daemon stays asleep when idle."""


class IdleExpiry:
    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, reaper: Reaper, idle_expiry: float = 0.0):
        self.store = store
        self.loop = loop
        self.reaper = reaper
        self.idle_expiry = idle_expiry
        self.expired = 0
        self._timer = Timer(loop, self.run, "expiring idle sessions", log)
        self._last_run = float("-inf")

    def configure(self, idle_expiry: float) -> None:
        """Apply a new setting now (0 turns expiry off)."""
        self.idle_expiry = idle_expiry
        self.run()

    def stop(self) -> None:
        self._timer.cancel()

    def _unchecked(self) -> list[tuple[str, float, ProcessIdentity | None]]:
        """(session id, last activity, owner) of every live session whose owner cannot be checked."""
        rows = self.store.db.execute(
            "SELECT session_id, last_activity, owner_pid, owner_start, boot_id FROM sessions WHERE ended_at IS NULL"
            + ("" if self.reaper.mode == "polling" else " AND (owner_pid IS NULL OR owner_start IS NULL OR boot_id IS NULL)")
        ).fetchall()
        found: list[tuple[str, float, ProcessIdentity | None]] = []
        for sid, last, pid, start, boot in rows:
            if pid is None or start is None or boot is None:
                found.append((sid, last, None))
                continue
            owner = ProcessIdentity(pid, start, boot)
            if is_alive(owner)[1] == "cannot inspect":
                found.append((sid, last, owner))
        return found

    def run(self) -> list[str]:
        """End the sessions idle past the limit now; wake again when the next one is due."""
        self.stop()
        self._last_run = time.monotonic()
        if self.idle_expiry <= 0:
            return []
        now = self.store.now()
        due, next_due = [], None
        for sid, last, owner in self._unchecked():
            deadline = last + self.idle_expiry
            if deadline <= now:
                due.append((sid, owner))
            elif next_due is None or deadline < next_due:
                next_due = deadline
        ended: list[str] = []
        if due:
            with self.store.write() as db:
                ended = session_store.end(db, [sid for sid, _ in due], "expired", now)
            for sid, owner in due:
                if owner is not None:
                    self.reaper.untrack(sid, owner)
            self.expired += len(ended)
            log.info("expired %d session(s) idle for %gs whose owner cannot be checked", len(ended), self.idle_expiry)
        if next_due is not None:
            wait = max(next_due - time.time(), self._last_run + MIN_INTERVAL - time.monotonic(), 0.0)
            self._timer.arm(wait)
        return ended
