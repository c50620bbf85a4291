"""The SQLite store: one writer connection, migrations, and group commit.

Writes from many requests join one open transaction (each in its own savepoint, so a
failing request undoes only itself); the daemon commits once per event-loop turn and
only then releases the replies that waited on that commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator

from omnid_client.errors import StorageError

from .. import clock
from ..safefile import check_existing, os_message
from . import search as search_store
from .checkpoints import Checkpointer
from .events import ACTIVITY, Staged, stage
from .failures import CorruptDatabase, StoreError, disk_hint, is_corruption, storage_error
from .guard import WriteGuard
from .migrations import LATEST, MIGRATIONS, apply
from .search import StoreConnection

log = logging.getLogger("omnid.store")

CommitWaiter = Callable[[StorageError | None], None]
CLOCK_STEP_BACK = 1.0
"""Seconds the wall clock must go back for timestamps to follow it rather than stay ordered."""
ACTIVITY_DELAY = 1.0
"""Longest a coalesced last_activity bump waits for a commit, in seconds."""


class Store:
    def __init__(
        self,
        path: Path,
        *,
        schedule: Callable[[Callable[[], None]], object] | None = None,
        schedule_later: Callable[[float, Callable[[], None]], object] | None = None,
    ):
        """``schedule(fn)`` runs ``fn`` soon (the event loop's ``call_soon``), and
        ``schedule_later(delay, fn)`` after a delay (``call_later``); without them every
        write commits at once."""
        self.path = path
        self._schedule = schedule
        self._schedule_later = schedule_later
        self._activity: dict[str, float] = {}
        self._project_activity: dict[str, float] = {}
        self.writes = 0
        """Write blocks entered so far: tells a caller whether a request wrote."""
        self._activity_due = False
        self._project_activity_due = False
        self._flush_pending = False
        self._waiters: list[CommitWaiter] = []
        self._on_rollback: list[Callable[[], None]] = []
        self._last_now = 0.0
        self._closed = False
        self._failure = ("", float("-inf"), 0)  # last commit error logged, when, and how many since
        self.on_commit: Callable[[list[Staged]], None] | None = None
        """Given the events of each transaction once it has committed (the daemon's event hub)."""
        self.on_flushed: Callable[[int, int, list[Staged] | None], None] | None = None
        """Told of each commit: the writes it joined, the nanoseconds it took, and its events
        (None if it failed): the daemon's metrics."""
        self._batch_from = 0
        self.on_failure: Callable[[str], None] | None = None
        """Told of each failed COMMIT that is logged (at most once a minute for the same one);
        refusals by the guard are told by ``guard.on_refusal``."""
        self.db = self._open()
        self.guard = WriteGuard(self.path, self.db)
        """Whether writes may go on: the file is still the one open, and under the quota."""
        self.search = search_store.Deferral(self.db, schedule_later, self.write) if schedule_later else None
        """Search rows indexed in batches (where a timer can move them: the daemon's store)."""
        self.checkpoints = Checkpointer(self.path if schedule_later else None, self.db)

    def _open(self) -> StoreConnection:
        try:
            # SQLite follows links: a planted one must not make it write someone else's file.
            for suffix in ("-wal", "-shm", ""):
                check_existing(f"{self.path}{suffix}")
        except OSError as e:
            raise StoreError(f"cannot open database: {os_message(e)}") from None
        if self.path.exists():
            self._inspect()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, factory=StoreConnection)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {self.path}: {e}{disk_hint(self.path)}") from e
        try:
            check_version(db, self.path)  # before anything below rewrites a newer omnid's file
            db.execute("PRAGMA busy_timeout = 5000")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            migrate(db, self.path)
        except sqlite3.Error as e:
            db.close()
            kind = CorruptDatabase if is_corruption(e) else StoreError
            raise kind(f"cannot open database {self.path}: {e}{disk_hint(self.path)}") from e
        except BaseException:
            db.close()
            raise
        return db

    def _inspect(self) -> None:
        """Check an existing database read-only, changing nothing (a read-write connection closed on a
        damaged file can checkpoint or delete its WAL): StoreError if newer, CorruptDatabase if damaged."""
        try:
            probe = sqlite3.connect(f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True)
        except sqlite3.Error:
            return  # the read-write open below reports why
        try:
            check_version(probe, self.path)
            check = probe.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise CorruptDatabase(f"database {self.path} failed its integrity check: {check}")
        except sqlite3.Error as e:
            if is_corruption(e):
                raise CorruptDatabase(f"database {self.path} is damaged: {e}") from e
        finally:
            probe.close()

    # -- time --------------------------------------------------------------------

    def now(self) -> float:
        """UTC epoch seconds from the wall clock, strictly increasing within this daemon
        (sub-ms precision) except across a jump back of ``CLOCK_STEP_BACK`` or more: then
        timestamps follow the clock again at once, rather than stand still until it
        catches up."""
        t = clock.wall()
        if t <= self._last_now:
            if self._last_now - t < CLOCK_STEP_BACK:
                t = self._last_now + 1e-6
            else:
                log.warning("the wall clock went back %.3fs; timestamps follow it", self._last_now - t)
        self._last_now = t
        return t

    # -- transactions ------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    @contextlib.contextmanager
    def write(self) -> Iterator[StoreConnection]:
        """One request's writes: joins the open transaction inside its own savepoint, or begins one
        (and needs none: until it ends, the transaction holds only its writes, all undone on failure)."""
        db = self.db
        self.writes += 1
        joined = db.in_transaction
        if joined:
            db.execute("SAVEPOINT request")
        else:
            db.execute("BEGIN IMMEDIATE")
            self._batch_from = self.writes - 1
            if self._schedule is not None and not self._flush_pending:
                self._flush_pending = True
                self._schedule(self.flush)
        # Search rows are only ever appended to this list or replaced by a new one, so
        # cutting this one back to its length now restores them as they were.
        pending = db.pending_search_rows
        mark = len(pending)
        events_mark = len(db.pending_events)
        try:
            yield db
        except BaseException as exc:
            if not db.in_transaction:  # SQLite abandoned the whole transaction (disk full, I/O error)
                self._abort(exc)
            elif joined:
                db.execute("ROLLBACK TO request")
                db.execute("RELEASE request")
                del pending[mark:]
                db.pending_search_rows = pending
                del db.pending_events[events_mark:]
            else:
                db.execute("ROLLBACK")
                db.pending_search_rows = []
                db.pending_events = []
            raise
        if joined:
            db.execute("RELEASE request")
        if self._schedule is None:
            self.flush()

    def after_commit(self, waiter: CommitWaiter) -> None:
        """Run ``waiter(None)`` once the open transaction commits (now, if none is open),
        or ``waiter(error)`` if it cannot."""
        if self.db.in_transaction:
            self._waiters.append(waiter)
        else:
            waiter(None)

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Called after a batch is lost, so in-memory state can be rebuilt from the database."""
        self._on_rollback.append(callback)

    # -- coalesced activity ------------------------------------------------------------

    def note_activity(self, session_id: str, at: float) -> None:
        """Record that a live session was used at ``at`` without a commit of its own: the
        bump rides on the next commit, at most ``ACTIVITY_DELAY`` seconds away. Losing it
        in a crash loses nothing anyone was promised (no reply waited for it)."""
        self._activity[session_id] = at
        if self._schedule_later is None:
            with self.write():
                pass
        elif not self._activity_due and not self.db.in_transaction:
            self._activity_due = True
            self._schedule_later(ACTIVITY_DELAY, self._commit_activity)

    def note_project_activity(self, project_id: str | None, at: float) -> None:
        """Record that a project was used at ``at``. Bumps are written at most once per
        ``ACTIVITY_DELAY`` seconds, however many writes use the project meanwhile, so the
        database may show a project's last_activity up to that much late (and a crash may
        lose those bumps); reads of projects call ``settle_project_activity`` first."""
        if project_id is None:
            return
        self._project_activity[project_id] = at
        if self._schedule_later is None:
            self.settle_project_activity()
        elif not self._project_activity_due:
            self._project_activity_due = True
            self._schedule_later(ACTIVITY_DELAY, self._project_activity_timer)

    def settle_project_activity(self) -> None:
        """Write the pending project bumps now (in the open transaction, if there is one)."""
        if not self._project_activity:
            return
        if self.db.in_transaction:
            self._apply_project_activity()
        else:
            with self.write():
                self._apply_project_activity()

    def pending_activity(self, session_id: str) -> float | None:
        return self._activity.get(session_id)

    def _commit_activity(self) -> None:
        self._activity_due = False
        if self._activity:
            with self.write():
                pass  # flush() applies the pending bumps inside this transaction

    def _project_activity_timer(self) -> None:
        self._project_activity_due = False
        self.settle_project_activity()

    def _apply_activity(self) -> None:
        pending, self._activity = self._activity, {}
        for sid in pending:
            stage(self.db, ACTIVITY, session_id=sid)
        self.db.executemany(
            "UPDATE sessions SET last_activity = max(last_activity, ?) WHERE session_id = ? AND ended_at IS NULL",
            [(at, sid) for sid, at in pending.items()],
        )

    def _apply_project_activity(self) -> None:
        pending, self._project_activity = self._project_activity, {}
        self.db.executemany(
            "UPDATE projects SET last_activity = max(last_activity, ?) WHERE project_id = ?",
            [(at, pid) for pid, at in pending.items()],
        )

    def flush(self) -> None:
        self._flush_pending = False
        if self._closed:  # a flush scheduled before close() ran
            return
        if not self.db.in_transaction:
            self.db.pending_search_rows = []
            self.db.pending_events = []
            self._release(None)
            return
        self.guard.check()  # the file may be gone: then this batch must not be acknowledged
        if self.guard.lost is not None:
            self._log_failure(self.guard.lost)
            if self.on_flushed is not None:
                self.on_flushed(self.writes - self._batch_from, 0, None)
            self._abort(StorageError(self.guard.lost, {"reason": "database_gone"}))
            return
        started = time.perf_counter_ns()
        try:
            if self._activity:
                self._apply_activity()
            if self.search is not None:
                self.search.at_commit()
            else:
                search_store.write_pending(self.db)
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            logged = self._log_failure(str(e))
            if logged is not None and self.on_failure is not None:
                self.on_failure(logged)
            if self.on_flushed is not None:
                self.on_flushed(self.writes - self._batch_from, time.perf_counter_ns() - started, None)
            self._abort(e)
            return
        events, self.db.pending_events = self.db.pending_events, []
        self.checkpoints.committed(self.writes - self._batch_from)
        if self.on_flushed is not None:
            self.on_flushed(self.writes - self._batch_from, time.perf_counter_ns() - started, events)
        if events and self.on_commit is not None:
            try:
                self.on_commit(events)
            except Exception:  # telling subscribers must never fail the writes that committed
                log.exception("publishing %d event(s) failed", len(events))
        self._release(None)

    def _log_failure(self, why: str) -> str | None:
        """Log a failed commit; the same failure again (a full disk fails every batch) at
        most once a minute, with how often it happened meanwhile. The line logged, if one was."""
        text, logged_at, since = self._failure
        now = time.monotonic()
        if why == text and now - logged_at < 60.0:
            self._failure = (text, logged_at, since + 1)
            return None
        if since and why == text:
            more = f" (and {since} more time(s) in the last minute)"
        else:  # the repeats not logged, if any, were of the previous failure, not of this one
            more = f" (after {since} more time(s) of: {text})" if since else ""
        self._failure = (why, now, 0)
        line = f"commit failed: {why}{more}"
        log.error("%s", line)
        return line

    def _abort(self, exc: BaseException) -> None:
        self.db.pending_search_rows = []
        self.db.pending_events = []
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            error = storage_error(exc)
        elif isinstance(exc, StorageError):
            error = exc
        else:
            error = StorageError(f"write failed: {exc}")
        self._release(error)
        for callback in self._on_rollback:
            callback()

    def _release(self, error: StorageError | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter(error)

    # -- housekeeping --------------------------------------------------------------

    def file_sizes(self) -> tuple[int, int]:
        def size(p: Path) -> int:
            try:
                return os.path.getsize(p)
            except OSError:
                return 0

        return size(self.path), size(Path(f"{self.path}-wal"))

    def set_durability(self, durability: str) -> None:
        """``PRAGMA synchronous`` for the commits from now on: "normal" or "full"."""
        level = {"normal": 1, "full": 2}[durability]
        self.flush()  # the pragma cannot change inside the open transaction
        self.db.execute(f"PRAGMA synchronous = {level}")

    def durability(self) -> str:
        return ("off", "normal", "full", "extra")[self.db.execute("PRAGMA synchronous").fetchone()[0]]

    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        if self.search is not None:
            self.search.closed = True
            self.search = None  # from here on rows go straight into the index
            try:  # the deferred ones first (they are older); if that fails, the next start moves them
                if search_store.deferred(self.db):
                    if not self.db.in_transaction:
                        self.db.execute("BEGIN IMMEDIATE")  # not write(): the loop may be gone
                    self.db.execute("SAVEPOINT close_search")
                    try:
                        search_store.move_deferred(self.db)
                    except sqlite3.Error:
                        self.db.execute("ROLLBACK TO close_search")
                        raise
                    finally:
                        self.db.execute("RELEASE close_search")
            except sqlite3.Error as e:
                log.warning("indexing deferred search rows failed: %s", e)
        if (self._activity or self._project_activity) and not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
        if self._project_activity:
            self._apply_project_activity()
        self.flush()
        self.checkpoints.close()
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()
        self.guard.close()  # after SQLite's connection (see WriteGuard)


def check_version(db: sqlite3.Connection, path: Path) -> int:
    """The schema version; StoreError if a newer omnid wrote this database."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > LATEST:
        raise StoreError(
            f"database {path} has schema version {found}, newer than this omnid understands "
            f"({LATEST}); upgrade omnid or point OMNID_HOME elsewhere"
        )
    return found


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Bring the schema to ``LATEST``; returns the version found. A database from a
    newer omnid is refused, and an existing one is backed up before it is changed."""
    found = check_version(db, path)
    if found == LATEST:
        return found
    backup = path.with_name(f"{path.name}.before-v{LATEST}")
    if found > 0:
        target = sqlite3.connect(backup)
        with target:
            db.backup(target)
        target.close()
        log.info("backed up schema v%d database to %s before migrating", found, backup)
    for version in range(found + 1, LATEST + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            apply(db, MIGRATIONS[version - 1])
            db.execute(f"PRAGMA user_version = {version}")
            db.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise (CorruptDatabase if is_corruption(e) else StoreError)(
                f"migrating {path} from schema v{version - 1} to v{version} failed: {e}; "
                f"the database was left at v{version - 1}" + (f" (backup: {backup})" if found > 0 else "")
            ) from e
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("migrated %s to schema v%d", path, version)
    return found
