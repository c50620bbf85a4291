"""Retention: ended sessions older than an age are appended to an archive (JSONL in the
export format) and then deleted, on a timer and on request; every run is logged and
counted in the daemon's status.

Nothing is deleted unless an age is configured or given."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Collection, Coroutine, Iterable, Mapping, TypeVar

from omnid_client.errors import Invalid, StorageError
from omnid_client.protocol import Record, RetentionResult, RetentionRun, RetentionStatus

from .. import clock
from ..safefile import UnsafePath, open_private
from ..store import Store, search as search_store, tasks as task_store
from ..store.records import archive_head, jsonl, session_records
from ._timer import Timer

log = logging.getLogger("omnid.retention")

ENV = "OMNID_RETENTION"
MIN_INTERVAL = 30.0
"""The timer never wakes more often than this, except to work through a backlog."""
MAX_SLEEP = 6 * 3600.0
CHUNK = 500
"""Most sessions archived and deleted in one run."""
ARCHIVE_CHUNK_BYTES = 8 << 20
"""A run stops taking sessions once their archive lines reach this (it takes at least one)."""
T = TypeVar("T")


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


def write_archive(path: Path, records: Iterable[Record | bytes], protected: Collection[str] = ()) -> int:
    """Append records (or lines already encoded) as JSONL and fsync; on failure the file is
    cut back to its old size, so an archive never ends in half a line. Returns the bytes
    written. Only a regular file of this user is appended to, never one of ``protected``
    (real paths) and never through a link: UnsafePath otherwise."""
    if os.path.realpath(path) in protected:
        raise UnsafePath(f"{path} is one of omnid's own files, not an archive")
    fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        st = os.fstat(fd)
        for own in protected:  # a hard link to one of them
            with contextlib.suppress(OSError):
                if os.path.samestat(st, os.stat(own)):
                    raise UnsafePath(f"{path} is one of omnid's own files, not an archive")
        size = st.st_size
        written = 0
        try:
            buf = bytearray()
            for record in records:
                buf += record if isinstance(record, bytes) else jsonl(record)
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


def off_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` in a daemon thread of its own: a call stuck in the kernel (a hung file
    system) holds neither the event loop nor the daemon's exit."""
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except BaseException as e:  # handed to the awaiting task
            outcome = (None, e)
        with contextlib.suppress(RuntimeError):  # the loop is gone: the daemon stopped
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name=f"omnid-{fn.__name__}", daemon=True).start()
    return future


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
        self._timer = Timer(loop, self._fire, "retention run", log)
        self._runs: set[asyncio.Task[Any]] = set()
        self._one_at_a_time = asyncio.Lock()
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
        """Stop the timer and any run (an archive write already under way finishes in its
        thread; its sessions are then archived again next time, never lost)."""
        self.stop_timer()
        for task in self._runs:
            task.cancel()

    def stop_timer(self) -> None:
        self._timer.cancel()
        self.next_run = None

    def reschedule(self) -> None:
        """The age changed (e.g. new configuration): wake when the new age says so."""
        self.stop_timer()
        if self.age():
            self._arm(self._next_delay())

    def _arm(self, delay: float) -> None:
        self._timer.arm(delay)
        self.next_run = clock.wall() + delay

    def _next_delay(self) -> float:
        age = self.age() or 0.0
        oldest = self.store.db.execute("SELECT min(ended_at) FROM sessions WHERE ended_at IS NOT NULL").fetchone()[0]
        due = oldest + age if oldest is not None else clock.wall() + age
        wait = max(due - clock.wall(), self._last_run + MIN_INTERVAL - time.monotonic(), 0.0)
        return min(wait, max(MAX_SLEEP, MIN_INTERVAL))

    def _fire(self) -> None:
        self.next_run = None
        age = self.age()
        if not age:
            return
        self._last_run = time.monotonic()
        self._start(self._timer_run(age))

    async def _timer_run(self, age: float) -> None:
        try:
            # Not into a database file that is gone: the archive would get the same sessions
            # again on every retry, as their deletion can never commit.
            self.store.guard.ensure_writable(grows=False)
            result = await self._run(trigger="timer", age=age, target=self.archive_path, limit=CHUNK)
        except (StorageError, Invalid):
            self._arm(MIN_INTERVAL)  # logged and counted by the run
            return
        except Exception:
            log.exception("retention run failed")
            self._arm(MIN_INTERVAL)
            return
        # A backlog is worked through a chunk per loop turn; then sleep until the next is due.
        self._arm(0.0 if result.remaining else self._next_delay())

    def _start(self, run: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = self.loop.create_task(run)
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return task

    # -- one run -----------------------------------------------------------------------

    def request(
        self,
        *,
        older_than: float | None = None,
        archive: str | None = None,
        purge: bool = False,
        dry_run: bool = False,
        limit: int = CHUNK,
    ) -> RetentionResult | asyncio.Task[RetentionResult]:
        """A run asked for by a client: archive (unless ``purge``) then delete up to ``limit``
        ended sessions that ended over ``older_than`` seconds ago (default: the configured
        age). A dry run answers at once; a real one is a task whose result is the answer."""
        age = older_than if older_than is not None else self.age()
        if age is None:
            raise Invalid(
                f"no retention age is configured (config retention and {ENV} are unset or 0) and none was given",
                {"field": "older_than"},
            )
        if purge and archive is not None:
            raise Invalid("archive the sessions or purge them, not both", {"field": "purge"})
        target = None if purge else self._archive_target(archive)
        if not dry_run:
            return self._start(self._run(trigger="manual", age=age, target=target, limit=limit))
        cutoff = self.store.now() - age
        total, ids = self._due(cutoff, limit)
        return RetentionResult(True, cutoff, ids, str(target) if target else None, total - len(ids))

    def _due(self, cutoff: float, limit: int) -> tuple[int, list[str]]:
        """How many ended sessions ended before ``cutoff``, and the first ``limit`` of them."""
        db = self.store.db
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
        return total, ids

    async def _run(self, *, trigger: str, age: float, target: Path | None, limit: int) -> RetentionResult:
        """The archive is written in a thread, never on the event loop (it may be any file a
        client names); a session is deleted only if it is still exactly what was archived."""
        async with self._one_at_a_time:
            cutoff = self.store.now() - age
            total, ids = self._due(cutoff, limit)
            digests: dict[str, bytes] = {}
            try:
                if ids and target is not None:
                    data, digests = self._encode(ids)
                    ids = list(digests)
                    try:
                        await off_loop(self.loop, write_archive, target, [data], self._protected)
                    except UnsafePath as e:
                        raise Invalid(f"archive {target}: {e}; nothing was deleted", {"field": "archive"}) from None
                    except OSError as e:
                        raise StorageError(
                            f"cannot append to archive {target}: {e}; nothing was deleted", {"archive": str(target)}
                        ) from e
                if ids:
                    with self.store.write():
                        if digests:
                            ids = [sid for sid in ids if self._digest(sid) == digests[sid]]
                        search_store.unindex_sessions(self.store.db, ids)
                        task_store.delete_sessions(self.store.db, ids)
                    await self._committed()
            except asyncio.CancelledError:
                raise
            except Invalid as e:
                if trigger != "manual":  # a client's bad request is its own answer; the daemon's is news
                    self._record(trigger, cutoff, 0, target, str(e))
                raise
            except StorageError as e:
                self._record(trigger, cutoff, 0, target, str(e).removesuffix("; nothing was deleted"))
                raise
            except Exception as e:
                self._record(trigger, cutoff, 0, target, f"{type(e).__name__}: {e}")
                raise
            self._record(trigger, cutoff, len(ids), target, None)
            return RetentionResult(False, cutoff, ids, str(target) if target else None, total - len(ids))

    def _encode(self, ids: list[str]) -> tuple[bytes, dict[str, bytes]]:
        """The archive lines of the first of ``ids`` that fit ``ARCHIVE_CHUNK_BYTES`` (at least
        one), and a digest of each session's lines, by session id."""
        db = self.store.db
        parts: list[bytes] = []
        digests: dict[str, bytes] = {}
        size = 0
        for sid in ids:
            lines = b"".join(jsonl(r) for r in session_records(db, sid))
            parts.append(lines)
            digests[sid] = hashlib.blake2b(lines, digest_size=16).digest()
            size += len(lines)
            if size >= ARCHIVE_CHUNK_BYTES:
                break
        head = b"".join(jsonl(r) for r in archive_head(db, list(digests)))
        return head + b"".join(parts), digests

    def _digest(self, session_id: str) -> bytes:
        lines = b"".join(jsonl(r) for r in session_records(self.store.db, session_id))
        return hashlib.blake2b(lines, digest_size=16).digest()

    def _committed(self) -> asyncio.Future[None]:
        """Resolves once the open transaction commits (StorageError if it cannot)."""
        done: asyncio.Future[None] = self.loop.create_future()

        def settle(error: Exception | None) -> None:
            if not done.done():
                done.set_exception(error) if error is not None else done.set_result(None)

        self.store.after_commit(settle)
        return done

    def _archive_target(self, archive: str | None) -> Path:
        if archive is None:
            return self.archive_path
        if not os.path.isabs(archive):
            raise Invalid(f"archive path {archive!r} must be absolute", {"field": "archive"})
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
