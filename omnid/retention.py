"""Retention: ended sessions older than an age are appended to an archive (JSONL in the
export format) and then deleted, on a timer and on request; every run is logged and
counted in the daemon's status. Nothing is deleted unless an age is configured or given."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Mapping

from omnid_client.errors import Invalid, StorageError
from omnid_client.protocol import Record, RetentionResult, RetentionRun, RetentionStatus

from . import clock
from .store import Store
from .store import search as search_store
from .store import tasks as task_store
from .store.transfer import archive_records, jsonl

log = logging.getLogger("omnid.retention")

ENV = "OMNID_RETENTION"
MIN_INTERVAL = 30.0
"""The timer never wakes more often than this, except to work through a backlog."""
MAX_SLEEP = 6 * 3600.0
CHUNK = 500
"""Most sessions archived and deleted in one transaction (one loop turn)."""


def retention_from_env(environ: Mapping[str, str] = os.environ) -> tuple[float | None, str | None]:
    """The retention age in seconds from ``OMNID_RETENTION`` (unset or 0: keep forever),
    and a warning when the value is unusable (then nothing is deleted)."""
    text = environ.get(ENV, "").strip()
    if not text:
        return None, None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not (0 <= seconds < float("inf")):
        return None, f"{ENV}={text!r} is not a number of seconds; retention is off (sessions are kept)"
    return (seconds or None), None


def write_archive(path: Path, records: Iterable[Record]) -> int:
    """Append records as JSONL and fsync; on failure the file is cut back to its old size,
    so an archive never ends in half a line. Returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        written = 0
        try:
            buf = bytearray()
            for record in records:
                buf += jsonl(record)
                if len(buf) >= 1 << 20:
                    written += _write_all(fd, buf)
                    buf.clear()
            written += _write_all(fd, buf)
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
        return written
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


class Archiver:
    """Archives and deletes ended sessions older than ``age()`` seconds (None: never)."""

    def __init__(
        self,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        *,
        age: Callable[[], float | None],
        archive_path: Path,
        protected: Iterable[Path] = (),
    ):
        self.store = store
        self.loop = loop
        self.age = age
        self.archive_path = archive_path
        self._protected = {os.path.realpath(p) for p in protected}
        self._timer: asyncio.TimerHandle | None = None
        self._last_run = -MIN_INTERVAL
        self.next_run: float | None = None
        self.runs = self.archived = self.purged = self.failures = 0
        self.last_run: RetentionRun | None = None

    # -- the timer ---------------------------------------------------------------------

    def start(self) -> None:
        """Run soon (sessions may have aged while the daemon was down), then when due."""
        if self.age():
            self._arm(0.0)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.next_run = None

    def reschedule(self) -> None:
        """The age changed (e.g. new configuration): wake when the new age says so."""
        self.stop()
        if self.age():
            self._arm(self._next_delay())

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._fire)
        self.next_run = clock.wall() + delay

    def _next_delay(self) -> float:
        age = self.age() or 0.0
        oldest = self.store.db.execute("SELECT min(ended_at) FROM sessions WHERE ended_at IS NOT NULL").fetchone()[0]
        due = oldest + age if oldest is not None else clock.wall() + age
        wait = max(due - clock.wall(), self._last_run + MIN_INTERVAL - time.monotonic(), 0.0)
        return min(wait, max(MAX_SLEEP, MIN_INTERVAL))

    def _fire(self) -> None:
        self._timer = None
        self.next_run = None
        if not self.age():
            return
        self._last_run = time.monotonic()
        try:
            # Not into a database file that is gone: the archive would get the same sessions
            # again on every retry, as their deletion can never commit.
            self.store.ensure_writable(grows=False)
            with self.store.write():
                result = self.run(trigger="timer")
        except Exception as e:
            if not isinstance(e, StorageError):
                log.exception("retention run failed")
            self._arm(MIN_INTERVAL)
            return
        # A backlog is worked through a chunk per loop turn; then sleep until the next is due.
        self._arm(0.0 if result.remaining else self._next_delay())

    # -- one run -----------------------------------------------------------------------

    def run(
        self,
        *,
        trigger: str,
        older_than: float | None = None,
        archive: str | None = None,
        purge: bool = False,
        dry_run: bool = False,
        limit: int = CHUNK,
    ) -> RetentionResult:
        """Archive (unless ``purge``) then delete up to ``limit`` ended sessions that ended
        over ``older_than`` seconds ago (default: the configured age). Call inside a write."""
        age = older_than if older_than is not None else self.age()
        if age is None:
            raise Invalid(
                f"no retention age is configured (config retention and {ENV} are unset or 0) and none was given", {"field": "older_than"}
            )
        if purge and archive is not None:
            raise Invalid("archive the sessions or purge them, not both", {"field": "purge"})
        target = None if purge else self._archive_target(archive)
        db = self.store.db
        now = self.store.now()
        cutoff = now - age
        total = db.execute(
            "SELECT count(*) FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,)
        ).fetchone()[0]
        ids = [
            r[0]
            for r in db.execute(
                "SELECT session_id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ? "
                "ORDER BY ended_at, session_id LIMIT ?",
                (cutoff, limit),
            )
        ]
        result = RetentionResult(dry_run, cutoff, ids, str(target) if target else None, total - len(ids))
        if dry_run:
            return result
        try:
            if ids and target is not None:
                write_archive(target, archive_records(db, ids))
            if ids:
                search_store.unindex_sessions(db, ids)
                task_store.delete_sessions(db, ids)
        except OSError as e:
            self._record(trigger, cutoff, 0, target, f"cannot append to archive {target}: {e}")
            raise StorageError(f"cannot append to archive {target}: {e}; nothing was deleted", {"archive": str(target)}) from e
        except Exception as e:
            self._record(trigger, cutoff, 0, target, f"{type(e).__name__}: {e}")
            raise
        self._record(trigger, cutoff, len(ids), target, None)
        return result

    def _archive_target(self, archive: str | None) -> Path:
        if archive is None:
            return self.archive_path
        if not os.path.isabs(archive):
            raise Invalid(f"archive path {archive!r} must be absolute", {"field": "archive"})
        if os.path.realpath(archive) in self._protected:
            raise Invalid(f"{archive} is one of omnid's own files, not an archive", {"field": "archive"})
        return Path(archive)

    def _record(self, trigger: str, cutoff: float, deleted: int, target: Path | None, error: str | None) -> None:
        self.last_run = RetentionRun(clock.wall(), trigger, cutoff, deleted, str(target) if target else None, error)  # type: ignore[arg-type]
        before = datetime.fromtimestamp(cutoff).astimezone().isoformat(timespec="seconds")
        if error is not None:
            self.failures += 1
            log.error("retention (%s): failed, nothing deleted: %s", trigger, error)
            return
        self.runs += 1
        if target is None:
            self.purged += deleted
            log.info("retention (%s): purged %d session(s) that ended before %s", trigger, deleted, before)
        else:
            self.archived += deleted
            log.info(
                "retention (%s): archived %d session(s) that ended before %s to %s and deleted them",
                trigger, deleted, before, target,
            )

    def status(self) -> RetentionStatus:
        return RetentionStatus(
            age=self.age(),
            archive=str(self.archive_path),
            runs=self.runs,
            archived=self.archived,
            purged=self.purged,
            failures=self.failures,
            last_run=self.last_run,
            next_run=self.next_run,
        )
