"""Purging expired project memories, to reclaim their space.

Readers already never see them; this wakes at the next expiry but never more often than
every ``MIN_INTERVAL`` seconds."""

from __future__ import annotations

import asyncio
import logging
import time

from .. import clock
from ..store import Store, memories as memory_store
from ..store.events import stage
from ._timer import Timer

log = logging.getLogger("omnid.expiry")

MIN_INTERVAL = 30.0


class Expirer:
    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop):
        self.store = store
        self.loop = loop
        self._timer = Timer(loop, self._fire, "purging expired memories", log)
        self._due: float | None = None
        self._last_run = 0.0
        self.purged = 0

    def start(self) -> None:
        self.purge()

    def stop(self) -> None:
        self._timer.cancel()

    def expect(self, expires_at: float) -> None:
        """A memory will expire at ``expires_at`` (UTC epoch seconds): make sure we wake for it.
        The wait runs on the monotonic clock: a wall-clock jump makes a wake early (it finds
        nothing due and sleeps again) or late (readers never see an expired memory anyway)."""
        if self._due is None or expires_at < self._due:
            self._schedule(expires_at)

    def purge(self) -> int:
        self._last_run = time.monotonic()
        with self.store.write() as db:
            ids = memory_store.expired_ids(db, self.store.now())
            if ids:
                memory_store.delete_ids(db, ids)
                stage(db, "memory.deleted", memory_ids=ids, reason="expired")
        if ids:
            log.info("purged %d expired memories", len(ids))
            self.purged += len(ids)
        upcoming = memory_store.next_expiry(self.store.db)
        self._due = None
        if upcoming is not None:
            self._schedule(upcoming)
        return len(ids)

    def _schedule(self, expires_at: float) -> None:
        self._due = expires_at
        wait = max(expires_at - clock.wall(), self._last_run + MIN_INTERVAL - time.monotonic(), 0.0)
        self._timer.arm(wait)

    def _fire(self) -> None:
        try:
            self.purge()
        except Exception:
            log.exception("purging expired memories failed")
            self._schedule(clock.wall() + MIN_INTERVAL)
