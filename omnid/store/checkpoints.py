"""WAL checkpoints off the event loop: a thread of its own copies committed pages back into the
database file, so that no group commit (and none of the replies waiting on it) waits for that
copy and its fsyncs.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold (1,000 pages by
default): with 16 clients writing, about one batch in a hundred took 10-50 ms instead of under
0.5 ms, every client waiting. A PASSIVE checkpoint never blocks the writer (which goes on
appending to the WAL meanwhile) and leaves durability as it was: a commit is as durable the
moment it returns, and a checkpoint syncs the WAL before it copies, whichever thread runs it.
"""

from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("omnid.store")

EVERY = 256
"""Committed writes between two checkpoints."""
FALLBACK_PAGES = 10_000
"""The writer's own automatic checkpoint, left on at this many WAL pages in case the thread
falls behind or fails (SQLite's default is 1,000)."""


class Checkpointer:
    """Checkpoints the database the store's connection ``db`` has open at ``path``, in one
    thread (started at the first checkpoint, blocked on its queue in between: no wakeups),
    through a connection of its own opened now, beside the store's. Without a ``path`` (a
    store with no event loop, whose writes need not be answered soon) it does nothing, and
    SQLite's automatic checkpoint runs as usual."""

    def __init__(self, path: Path | None, db: sqlite3.Connection):
        self._db: sqlite3.Connection | None = None
        if path is not None:
            db.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_PAGES}")
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # A first read opens the WAL now, as the store's connection has: the daemon holds
            # every file it will ever hold from the start, rather than one more at the first
            # checkpoint (which, with every fd taken by a crowd of clients, could not open it).
            self._db.execute("PRAGMA schema_version").fetchall()  # to the end: no read left open
        self._pool: ThreadPoolExecutor | None = None
        self._running: Future[None] | None = None
        self._since = 0
        self._failed = ""

    def committed(self, writes: int) -> None:
        """A group commit of ``writes`` writes succeeded: start a checkpoint if one is due
        and none is under way."""
        self._since += writes
        if self._since < EVERY or self._db is None or (self._running is not None and not self._running.done()):
            return
        self._since = 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="omnid-checkpoint")
        self._running = self._pool.submit(self._checkpoint, self._db)

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._failed = ""
        except sqlite3.Error as e:  # the next one tries again; the writer's fallback is still on
            if str(e) != self._failed:
                log.warning("checkpointing the database failed: %s", e)
            self._failed = str(e)

    def close(self) -> None:
        """Wait for a checkpoint under way, and close the connection (before the store's)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None
