"""Whether the database may still be written: its file is still the one open, and (for
writes that add data) its used size is under the storage quota."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from omnid_client.errors import StorageError

log = logging.getLogger("omnid.store")

CHECK_INTERVAL = 1.0
"""Seconds between looks at the database's file (still the one open?) and size, taken before
a commit once this much time has passed since the last. In between, the size is estimated
from the bytes of the requests that added data, and measured again once that estimate
reaches the quota."""
GROWTH_FACTOR = 3
"""What a request's bytes may take once stored, with their indexes and the search index
(which is written at commit, so a measurement inside a batch does not see it yet)."""


class WriteGuard:
    """Watches the database file at ``path``, open as ``db``: refuses writes once the file
    is deleted or replaced, and writes that add data once it is over ``max_bytes``."""

    def __init__(self, path: Path, db: sqlite3.Connection):
        self.path = path
        self.db = db
        self.max_bytes = 0
        """The storage quota in bytes of used pages; 0: none."""
        self.used_bytes = 0
        """Bytes of used pages (page_count - freelist_count), as of the last measurement."""
        self._added = 0
        """Bytes of requests that added data since then: an estimate of the growth."""
        self.lost: str | None = None
        """Why the database file can no longer be written (deleted or replaced), once found."""
        self._checked_at = float("-inf")
        self._file_fd = -1
        self._file_id: tuple[int, int] | None = None
        self._hold_file()
        self.check(force=True)

    def _hold_file(self) -> None:
        """Keep a descriptor on the database file just opened, to tell whether the path still
        names it. (Closed only after SQLite's connection: closing any descriptor of a file
        drops the process's POSIX locks on it, SQLite's included.)"""
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            st = os.fstat(fd)
            self._file_fd, self._file_id = fd, (st.st_dev, st.st_ino)

    def close(self) -> None:
        """Let go of the file (once SQLite's connection to it is closed)."""
        if self._file_fd >= 0:
            os.close(self._file_fd)
            self._file_fd = -1

    def check(self, *, force: bool = False) -> None:
        """Measure the used size and check the file is still there, at most once per
        ``CHECK_INTERVAL`` unless forced (the housekeeping tick forces it)."""
        now = time.monotonic()
        if not force and now - self._checked_at < CHECK_INTERVAL:
            return
        self._checked_at = now
        self._check_file()
        self._measure()

    def _measure(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            page_size, pages, free = (
                self.db.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("page_size", "page_count", "freelist_count")
            )
            self.used_bytes = (pages - free) * page_size
            self._added = 0

    def _check_file(self) -> None:
        if self.lost is not None or self._file_id is None:
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            what = "deleted"
        except OSError as e:  # cannot look (a directory made unreadable): not proof of anything
            log.debug("cannot check database file %s: %s", self.path, e)
            return
        else:
            if (st.st_dev, st.st_ino) == self._file_id:
                return
            what = "replaced by another file"
        self.lost = (
            f"the database file {self.path} was {what} while omnid was running; writes are refused "
            f"from now on, as they would be lost at the next start (restart omnid to use the file now there; "
            f"a new one is created if there is none)"
        )
        log.error("%s", self.lost)

    def refusal(self, *, grows: bool, adding: int = 0) -> StorageError | None:
        """Why a write must be refused, if it must: the database file is gone (as of the last
        ``check``), or (for a write that ``grows`` the database, by about ``adding`` bytes)
        it is over its quota."""
        if self.lost is not None:
            return StorageError(self.lost, {"reason": "database_gone"})
        if not grows or not self.max_bytes:
            return None
        if self.used_bytes + self._added + adding * GROWTH_FACTOR > self.max_bytes:
            self._measure()  # near the quota: measure instead of estimating
        if self.used_bytes > self.max_bytes:
            return StorageError(
                f"the database holds {self.used_bytes} bytes, over its quota of {self.max_bytes} "
                f"(max_database_bytes in the config file); raise it, or free space by ending and "
                f"deleting old sessions (retention, cleanup-orphans, memory delete); reads still work",
                {"reason": "quota", "used_bytes": self.used_bytes, "quota_bytes": self.max_bytes},
            )
        return None

    def ensure_writable(self, *, grows: bool, adding: int = 0) -> None:
        """Raise the ``refusal``, if there is one (checking first, if a check is due)."""
        self.check()
        refusal = self.refusal(grows=grows, adding=adding)
        if refusal is not None:
            raise refusal
        if grows:
            self._added += adding * GROWTH_FACTOR
