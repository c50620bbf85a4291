"""The SQLite store on real database files: migrations, pragmas, the one-live-session
index, group commit, commit failures and paging."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import resource
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import omnid.store
from omnid.identity import ProcessIdentity
from omnid.store import Store, StoreError, search, sessions as q
from omnid.store.failures import CorruptDatabase
from omnid.store.migrations import LATEST, MIGRATIONS, apply
from omnid_client import Invalid, StorageError
from omnid_client.protocol import Session
from tests.helpers import ROOT

BOOT = "11111111-2222-3333-4444-555555555555"


# --- helpers ----------------------------------------------------------------------


def make_session(**fields) -> Session:
    values = {
        "session_id": str(uuid.uuid4()),
        "tool_id": "tool",
        "tool_version": "1.0",
        "session_type": "default",
        "owner_pid": 4242,
        "owner_start": 777,
        "boot_id": BOOT,
        "workspace": "/work",
        "metadata": {"k": "v"},
        "started_at": 1000.0,
        "last_activity": 1000.0,
    }
    values.update(fields)
    return Session(**values)


def insert(db: sqlite3.Connection, *, dedup: bool = True, **fields) -> Session:
    s = make_session(**fields)
    q.insert(db, s, dedup=dedup)
    return s


def other_connection(path: Path) -> sqlite3.Connection:
    """An independent reader, as another process would have."""
    return sqlite3.connect(path, isolation_level=None)


def session_ids(path: Path) -> set[str]:
    db = other_connection(path)
    try:
        return {row[0] for row in db.execute("SELECT session_id FROM sessions")}
    finally:
        db.close()


def schema(db: sqlite3.Connection) -> list[tuple]:
    return db.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()


def user_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def build_database(path: Path, version: int, *, journal_mode: str = "delete") -> str | None:
    """A database as omnid at schema ``version`` left it, built by hand from the first
    ``version`` migrations; with a sessions row when that schema has the table.
    Returns the row's session id, if any."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA journal_mode = {journal_mode}")
        for migration in MIGRATIONS[:version]:
            apply(db, migration)
        db.execute(f"PRAGMA user_version = {version}")
        if version < 1:
            return None
        sid = str(uuid.uuid4())
        # Only the columns of the first sessions schema: later migrations must keep them.
        db.execute(
            "INSERT INTO sessions (session_id, tool_id, tool_version, session_type, owner_pid, owner_start, "
            "boot_id, workspace, metadata, started_at, last_activity) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (sid, "old-tool", "0.9", "default", 4242, 777, BOOT, "/old", '{"from": "old"}', 1000.5, 1001.5),
        )
        if version >= 2:  # the schema has context events: the row holds a few
            db.executemany(
                "INSERT INTO context_events (session_id, kind, subject, created_at) VALUES (?,?,?,?)",
                [(sid, "file_access", f"/old/{n}", 1001.0 + n) for n in range(OLD_EVENTS)],
            )
        if version >= 3:  # that schema counts them in the row, as omnid did when adding them
            db.execute("UPDATE sessions SET context_event_count = ? WHERE session_id = ?", (OLD_EVENTS, sid))
        if version >= 6:  # that schema rolls them up per subject, as omnid did when adding them
            db.executemany(
                "INSERT INTO context_rollup (session_id, kind, subject, events, bytes, first_at, last_at, "
                "max_importance) VALUES (?,?,?,1,?,?,?,0.5)",
                [(sid, "file_access", f"/old/{n}", len(f"/old/{n}"), 1001.0 + n, 1001.0 + n)
                 for n in range(OLD_EVENTS)],
            )
        return sid
    finally:
        db.close()


OLD_EVENTS = 3
"""Context events that ``build_database`` gives its row, in schemas that have them."""
OLD_ROW_COLUMNS = (
    "tool_id, tool_version, session_type, owner_pid, owner_start, boot_id, workspace, metadata, "
    "started_at, last_activity, ended_at"
)
OLD_ROW = ("old-tool", "0.9", "default", 4242, 777, BOOT, "/old", '{"from": "old"}', 1000.5, 1001.5, None)


def miscounted_context(db: sqlite3.Connection) -> list[tuple]:
    """(session_id, counter, rows) of every session whose context event counter is not
    the number of its context events: always empty."""
    return db.execute(
        "SELECT session_id, context_event_count, n FROM (SELECT session_id, context_event_count, "
        "(SELECT count(*) FROM context_events c WHERE c.session_id = s.session_id) AS n FROM sessions s) "
        "WHERE context_event_count != n"
    ).fetchall()


def read_old_row(db: sqlite3.Connection, sid: str) -> tuple | None:
    return db.execute(f"SELECT {OLD_ROW_COLUMNS} FROM sessions WHERE session_id = ?", (sid,)).fetchone()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "omnid.db"


@pytest.fixture
def reference_schema(tmp_path) -> Callable[[int], list[tuple]]:
    """The schema a database gets from applying the first ``version`` migrations by hand."""

    def build(version: int) -> list[tuple]:
        path = tmp_path / f"reference-v{version}.db"
        build_database(path, version)
        db = sqlite3.connect(path)
        try:
            return schema(db)
        finally:
            db.close()

    return build


@pytest.fixture
def store(db_path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


class Scheduled:
    """A store whose flushes are scheduled into a list the test runs by hand, as the
    event loop's ``call_soon`` would run them at the end of its turn."""

    def __init__(self, path: Path):
        self.pending: list[Callable[[], None]] = []
        self.store = Store(path, schedule=self.pending.append)

    def run_pending(self) -> None:
        pending, self.pending[:] = list(self.pending), []
        for fn in pending:
            fn()


@pytest.fixture
def scheduled(db_path) -> Iterator[Scheduled]:
    s = Scheduled(db_path)
    yield s
    s.store.close()


# --- migrations -------------------------------------------------------------------


@pytest.mark.parametrize("version", range(LATEST))
def test_migrates_from_every_earlier_version(db_path, reference_schema, version):
    sid = build_database(db_path, version)

    store = Store(db_path)
    try:
        assert store.schema_version() == LATEST
        assert user_version(store.db) == LATEST
        # The migrated schema is exactly the one a fresh database gets from all migrations.
        assert schema(store.db) == reference_schema(LATEST)
        names = {name for _, name, _, _ in schema(store.db)}
        assert {"sessions", "sessions_one_live_per_owner", "sessions_live", "sessions_newest",
                "sessions_tool_newest"} <= names
        if sid is not None:
            assert read_old_row(store.db, sid) == OLD_ROW
            # No pidfd inode was recorded for it: its owner is compared by start time alone.
            assert store.db.execute("SELECT owner_ino FROM sessions WHERE session_id = ?", (sid,)).fetchone() == (None,)
            assert miscounted_context(store.db) == []
            events = store.db.execute(
                "SELECT context_event_count FROM sessions WHERE session_id = ?", (sid,)
            ).fetchone()
            assert events == (OLD_EVENTS if version >= 2 else 0,)
            # Events stored before the rollup existed are rolled up by the migration.
            rolled = store.db.execute(
                "SELECT subject, events FROM context_rollup WHERE session_id = ? ORDER BY subject", (sid,)
            )
            assert rolled.fetchall() == ([(f"/old/{n}", 1) for n in range(OLD_EVENTS)] if version >= 2 else [])
    finally:
        store.close()

    backup = db_path.with_name(f"{db_path.name}.before-v{LATEST}")
    if version == 0:
        assert not backup.exists(), "a brand-new database needs no backup"
        return
    assert backup.exists()
    bdb = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        assert bdb.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert user_version(bdb) == version
        assert schema(bdb) == reference_schema(version)
        assert read_old_row(bdb, sid) == OLD_ROW
    finally:
        bdb.close()


def test_the_context_event_counter_is_filled_in_for_every_session_of_a_v2_database(db_path):
    build_database(db_path, 2)
    db = sqlite3.connect(db_path, isolation_level=None)
    held = {"none": 0, "one": 1, "many": 250}
    for n, (name, events) in enumerate(held.items()):
        db.execute(
            "INSERT INTO sessions (session_id, tool_id, session_type, started_at, last_activity, ended_at, end_reason) "
            "VALUES (?, 'v2-tool', 'default', ?, ?, ?, 'ended')",
            (name, 1000.0 + n, 1000.0 + n, 1001.0 + n),
        )
        db.executemany(
            "INSERT INTO context_events (session_id, kind, subject, created_at) VALUES (?, 'search', ?, 1000.5)",
            [(name, f"q{i}") for i in range(events)],
        )
    db.close()

    store = Store(db_path)
    try:
        counted = dict(
            store.db.execute("SELECT session_id, context_event_count FROM sessions WHERE tool_id = 'v2-tool'")
        )
        assert counted == held
        assert miscounted_context(store.db) == []
    finally:
        store.close()


def test_a_v4_database_keeps_its_pidfd_inodes_and_gains_resume_keys_edits_and_owner_history(db_path):
    sid = build_database(db_path, 4)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("UPDATE sessions SET owner_ino = 123456 WHERE session_id = ?", (sid,))
    db.close()

    store = Store(db_path)
    try:
        db = store.db
        row = db.execute(
            "SELECT owner_ino, resume_key, title, tags, pinned, archived_at, owner_since FROM sessions "
            "WHERE session_id = ?",
            (sid,),
        ).fetchone()
        assert row == (123456, None, None, None, 0, None, None)
        assert read_old_row(db, sid) == OLD_ROW
        session = q.get(db, sid)
        assert session is not None and (session.tags, session.pinned, session.resume_key) == ([], False, None)
        # Its history is its one owner, from its start.
        assert [(o.pid, o.since, o.until) for o in q.owners(db, session)] == [(4242, 1000.5, None)]
        # At most one live session of a tool per resume key, however they are written.
        insert = (
            "INSERT INTO sessions (session_id, tool_id, session_type, started_at, last_activity, resume_key) "
            "VALUES (?, 'keyed', 'default', 1.0, 1.0, 'k')"
        )
        with store.write():
            db.execute(insert, (str(uuid.uuid4()),))
        with pytest.raises(sqlite3.IntegrityError), store.write():
            db.execute(insert, (str(uuid.uuid4()),))
    finally:
        store.close()


def test_opening_a_current_database_changes_nothing_and_writes_no_backup(db_path):
    Store(db_path).close()
    before = sha256(db_path)
    store = Store(db_path)  # a second open finds version LATEST
    try:
        assert store.schema_version() == LATEST
    finally:
        store.close()
    assert sha256(db_path) == before
    assert not list(db_path.parent.glob("*.before-v*"))


@pytest.fixture
def one_more_migration(monkeypatch) -> list[str]:
    """Pretend omnid has a migration LATEST+1, so the upgrade path of an existing
    database (backup included) runs today, not only once a second migration ships."""
    extra = ["ALTER TABLE sessions ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'",
             "CREATE INDEX sessions_note ON sessions (note)"]
    monkeypatch.setattr(omnid.store, "MIGRATIONS", [*MIGRATIONS, extra])
    monkeypatch.setattr(omnid.store, "LATEST", LATEST + 1)
    return extra


def test_upgrading_an_existing_database_backs_it_up_first(db_path, one_more_migration):
    sid = build_database(db_path, LATEST)

    store = Store(db_path)
    try:
        assert store.schema_version() == LATEST + 1
        assert store.db.execute("SELECT note FROM sessions WHERE session_id = ?", (sid,)).fetchone() == ("migrated",)
        assert read_old_row(store.db, sid) == OLD_ROW
    finally:
        store.close()

    backup = db_path.with_name(f"{db_path.name}.before-v{LATEST + 1}")
    bdb = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        assert user_version(bdb) == LATEST
        assert read_old_row(bdb, sid) == OLD_ROW
        columns = {row[1] for row in bdb.execute("PRAGMA table_info(sessions)")}
        assert "note" not in columns
    finally:
        bdb.close()


def test_a_failing_migration_leaves_the_database_at_its_old_version(db_path, monkeypatch):
    broken = ["CREATE TABLE half_done (x)", "THIS IS NOT SQL"]
    monkeypatch.setattr(omnid.store, "MIGRATIONS", [*MIGRATIONS, broken])
    monkeypatch.setattr(omnid.store, "LATEST", LATEST + 1)
    sid = build_database(db_path, LATEST)

    with pytest.raises(StoreError) as refused:
        Store(db_path)
    backup = db_path.with_name(f"{db_path.name}.before-v{LATEST + 1}")
    assert type(refused.value) is StoreError and str(refused.value) == (
        f"migrating {db_path} from schema v{LATEST} to v{LATEST + 1} failed: near \"THIS\": syntax error; "
        f"the database was left at v{LATEST} (backup: {backup})"
    )
    assert backup.exists()

    db = other_connection(db_path)
    try:
        assert user_version(db) == LATEST
        assert "half_done" not in {name for _, name, _, _ in schema(db)}
        assert read_old_row(db, sid) == OLD_ROW
    finally:
        db.close()


def test_a_failing_migration_from_v1_names_the_backup_too(db_path, monkeypatch):
    monkeypatch.setattr(omnid.store, "MIGRATIONS", [MIGRATIONS[0], ["NOT SQL"], *MIGRATIONS[2:]])
    build_database(db_path, 1)
    backup = db_path.with_name(f"{db_path.name}.before-v{LATEST}")
    assert refused_open(db_path) == (
        f"migrating {db_path} from schema v1 to v2 failed: near \"NOT\": syntax error; "
        f"the database was left at v1 (backup: {backup})"
    )
    assert backup.exists()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_database_from_a_newer_omnid_is_refused_and_left_alone(db_path, journal_mode):
    sid = build_database(db_path, LATEST, journal_mode=journal_mode)
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {LATEST + 1}")
    db.close()
    before = sha256(db_path)

    with pytest.raises(StoreError) as refused:
        Store(db_path)
    assert str(refused.value) == (
        f"database {db_path} has schema version {LATEST + 1}, newer than this omnid understands ({LATEST}); "
        "upgrade omnid or point OMNID_HOME elsewhere"
    )

    assert sha256(db_path) == before, "refusing a newer database must not rewrite it"
    assert not list(db_path.parent.glob("*.before-v*"))
    db = other_connection(db_path)
    try:
        assert user_version(db) == LATEST + 1
        assert read_old_row(db, sid) == OLD_ROW
    finally:
        db.close()


def test_a_new_database_whose_first_migration_fails_is_left_empty_with_no_backup(db_path, monkeypatch):
    monkeypatch.setattr(omnid.store, "MIGRATIONS", [["CREATE TABLE half_done (x)", "NOT SQL"], *MIGRATIONS[1:]])
    assert refused_open(db_path) == (
        f"migrating {db_path} from schema v0 to v1 failed: near \"NOT\": syntax error; the database was left at v0"
    )
    db = other_connection(db_path)
    try:
        assert user_version(db) == 0 and schema(db) == []
    finally:
        db.close()
    assert not list(db_path.parent.glob("*.before-v*"))


def refused_open(path: Path, kind: type[StoreError] = StoreError) -> str:
    """Why ``Store(path)`` refuses the file (an error of exactly ``kind``), having checked
    that the refusal left no file descriptor open."""
    before = psutil.Process().num_fds()
    with pytest.raises(StoreError) as refused:
        Store(path)
    assert type(refused.value) is kind, refused.value
    assert psutil.Process().num_fds() == before, "a refused open closes what it opened"
    return str(refused.value)


def test_a_file_that_is_not_a_database_is_refused_as_damaged_and_left_alone(db_path):
    db_path.write_bytes(b"this is not an SQLite database" * 200)
    assert refused_open(db_path, CorruptDatabase) == f"database {db_path} is damaged: file is not a database"
    assert db_path.read_bytes() == b"this is not an SQLite database" * 200
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_a_database_failing_its_integrity_check_is_refused_as_damaged_and_left_alone(db_path):
    Store(db_path).close()
    db = other_connection(db_path)  # a NULL where the schema, changed behind SQLite's back, forbids one
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (NULL)")
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = 'CREATE TABLE t (x NOT NULL)' WHERE name = 't'")
    db.close()
    before = sha256(db_path)
    assert refused_open(db_path, CorruptDatabase) == (
        f"database {db_path} failed its integrity check: NULL value in t.x"
    )
    assert sha256(db_path) == before


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_planted_link_for_the_database_or_its_wal_or_shm_is_refused_not_followed(db_path, tmp_path, suffix):
    if suffix:
        Store(db_path).close()
    target = tmp_path / "someone-elses-file"
    target.write_bytes(b"not yours")
    link = Path(f"{db_path}{suffix}")
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    why = refused_open(db_path)
    assert why.startswith("cannot open database: ") and str(link) in why and "symlink" in why
    assert target.read_bytes() == b"not yours"


def test_a_database_in_a_missing_directory_is_refused_naming_it(tmp_path):
    path = tmp_path / "missing" / "omnid.db"
    assert refused_open(path) == f"cannot open database {path}: unable to open database file"


def test_a_database_sqlite_cannot_keep_a_wal_for_is_refused():
    """SQLite keeps an in-memory database in the "memory" journal mode, whatever is asked."""
    assert refused_open(Path(":memory:")) == ":memory:: cannot use WAL journal mode (got memory)"


# --- pragmas --------------------------------------------------------------------


@pytest.mark.parametrize(("pragma", "expected"), [("journal_mode", "wal"), ("foreign_keys", 1)])
def test_pragmas(store, pragma, expected):
    assert store.db.execute(f"PRAGMA {pragma}").fetchone()[0] == expected


def test_wal_mode_is_recorded_in_the_file(store, db_path):
    db = other_connection(db_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


# --- one live deduplicated session per (tool, owner process) --------------------------


def test_a_second_live_session_for_the_same_tool_and_owner_is_refused(store):
    insert(store.db)
    with pytest.raises(sqlite3.IntegrityError):
        insert(store.db)


def test_ending_the_live_session_frees_the_owner_for_a_new_one(store):
    first = insert(store.db)
    assert q.end(store.db, [first.session_id], "ended", 2000.0) == [first.session_id]
    second = insert(store.db)
    assert q.find_live(store.db, "tool", ProcessIdentity(4242, 777, BOOT)).session_id == second.session_id
    with pytest.raises(sqlite3.IntegrityError):
        insert(store.db)


def test_sessions_without_dedup_are_not_constrained(store):
    live = insert(store.db)
    insert(store.db, dedup=False)
    insert(store.db, dedup=False)
    assert q.count_live(store.db) == 3
    assert q.find_live(store.db, "tool", ProcessIdentity(4242, 777, BOOT)).session_id == live.session_id


@pytest.mark.parametrize(
    "different",
    [
        {"tool_id": "other-tool"},
        {"owner_pid": 4243},
        {"owner_start": 778},  # the pid was reused by a later process
        {"boot_id": "99999999-2222-3333-4444-555555555555"},  # the same pid after a reboot
    ],
    ids=lambda d: next(iter(d)),
)
def test_a_live_session_for_another_tool_or_process_is_allowed(store, different):
    insert(store.db)
    insert(store.db, **different)
    assert q.count_live(store.db) == 2


# --- group commit -----------------------------------------------------------------


def add(db: sqlite3.Connection, sid: str) -> None:
    q.insert(db, make_session(session_id=sid, owner_pid=None, owner_start=None, boot_id=None), dedup=True)


def test_writes_in_one_turn_share_one_transaction_committed_by_flush(scheduled, db_path):
    store, results = scheduled.store, []
    with store.write() as db:
        add(db, "a")
    store.after_commit(lambda err: results.append(("a", err)))
    with store.write() as db:
        add(db, "b")
    store.after_commit(lambda err: results.append(("b", err)))

    assert store.in_transaction
    assert len(scheduled.pending) == 1, "one flush per batch, however many writes join it"
    assert results == [], "no reply may be released before its write is durable"
    assert session_ids(db_path) == set(), "uncommitted writes must be invisible to other connections"

    scheduled.run_pending()

    assert results == [("a", None), ("b", None)]
    assert not store.in_transaction
    assert session_ids(db_path) == {"a", "b"}


def test_a_write_after_a_flush_starts_and_schedules_a_new_batch(scheduled, db_path):
    store = scheduled.store
    with store.write() as db:
        add(db, "a")
    scheduled.run_pending()
    with store.write() as db:
        add(db, "b")
    assert len(scheduled.pending) == 1
    assert session_ids(db_path) == {"a"}
    scheduled.run_pending()
    assert session_ids(db_path) == {"a", "b"}


def test_after_commit_with_no_open_transaction_runs_at_once(scheduled):
    results = []
    scheduled.store.after_commit(results.append)
    assert results == [None]


def _raise_runtime_error(db: sqlite3.Connection) -> None:
    add(db, "doomed")
    raise RuntimeError("request handler failed")


def _violate_a_constraint(db: sqlite3.Connection) -> None:
    add(db, "doomed")
    add(db, "a")  # primary key taken by the first write of the batch


@pytest.mark.parametrize("fail", [_raise_runtime_error, _violate_a_constraint], ids=["exception", "constraint"])
def test_a_failing_write_undoes_only_itself(scheduled, db_path, fail):
    store, results, rolled_back = scheduled.store, [], []
    store.on_rollback(lambda: rolled_back.append(True))
    with store.write() as db:
        add(db, "a")
    store.after_commit(results.append)

    with pytest.raises((RuntimeError, sqlite3.IntegrityError)), store.write() as db:
        fail(db)

    assert store.in_transaction, "the batch of the other writes goes on"
    with store.write() as db:
        add(db, "b")
    store.after_commit(results.append)
    scheduled.run_pending()

    assert session_ids(db_path) == {"a", "b"}
    assert results == [None, None]
    assert rolled_back == []


@pytest.mark.parametrize("fail", [_raise_runtime_error, _violate_a_constraint], ids=["exception", "constraint"])
def test_a_failing_write_that_began_the_batch_undoes_only_itself(scheduled, db_path, fail):
    store, results, rolled_back = scheduled.store, [], []
    store.on_rollback(lambda: rolled_back.append(True))
    with store.write() as db:
        add(db, "a")
    scheduled.run_pending()

    with pytest.raises((RuntimeError, sqlite3.IntegrityError)), store.write() as db:
        search.index(db, "message", "1", "doomed words", session_id="doomed", project_id=None, created_at=1.0)
        fail(db)
    with store.write() as db:
        add(db, "b")
    store.after_commit(results.append)
    scheduled.run_pending()

    assert session_ids(db_path) == {"a", "b"}
    assert results == [None]
    assert rolled_back == []
    assert indexed(db_path) == []


def test_without_a_scheduler_every_write_commits_at_once(store, db_path):
    with store.write() as db:
        add(db, "a")
    assert not store.in_transaction
    assert session_ids(db_path) == {"a"}
    results = []
    store.after_commit(results.append)
    assert results == [None]


# --- a batch that cannot be committed ------------------------------------------------


def _big_row(db: sqlite3.Connection) -> None:
    # Far more pages than the WAL file holds now, so the commit must grow that file.
    q.insert(db, make_session(session_id="big", owner_pid=None, metadata={"blob": "x" * 200_000}), dedup=True)


@contextlib.contextmanager
def _wal_cannot_grow(store: Store) -> Iterator[None]:
    """Disk full, for real: RLIMIT_FSIZE stops this process from growing any file past
    the WAL's current size, so SQLite's write of the batch's frames fails (EFBIG ->
    SQLITE_IOERR) and SQLite abandons the transaction itself."""
    limit = os.path.getsize(f"{store.path}-wal")
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def _prepare_deferred_fk(store: Store) -> None:
    store.db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    store.db.execute("CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")


def _orphan_row(db: sqlite3.Connection) -> None:
    # A deferred foreign key is checked only by COMMIT, which then fails and leaves the
    # transaction open: the store has to roll it back itself.
    db.execute("INSERT INTO child VALUES (42)")


COMMIT_FAILURES = [
    pytest.param(lambda store: None, _big_row, _wal_cannot_grow, id="io-error"),
    pytest.param(_prepare_deferred_fk, _orphan_row, lambda store: contextlib.nullcontext(), id="deferred-constraint"),
]


@pytest.mark.parametrize(("prepare", "poison", "during_commit"), COMMIT_FAILURES)
def test_a_failed_commit_fails_every_waiter_and_loses_only_its_batch(
    scheduled, db_path, prepare, poison, during_commit
):
    store, results, rolled_back, told = scheduled.store, [], [], []
    store.on_rollback(lambda: rolled_back.append(True))
    store.on_failure = told.append
    prepare(store)
    with store.write() as db:
        add(db, "before")
    scheduled.run_pending()

    with store.write() as db:
        add(db, "a")
    store.after_commit(results.append)
    with store.write() as db:
        poison(db)
    store.after_commit(results.append)
    with during_commit(store):
        scheduled.run_pending()

    assert len(results) == 2
    assert all(isinstance(r, StorageError) for r in results), results
    why = str(results[0]).removeprefix("database write failed: ")
    assert results[0].details["sqlite_error"].startswith("SQLITE_") and why != str(results[0])
    assert told == [f"commit failed: {why}"], "the failure, as logged, goes to on_failure"
    assert rolled_back == [True]
    assert not store.in_transaction
    assert session_ids(db_path) == {"before"}

    # The store recovers: the next batch commits.
    with store.write() as db:
        add(db, "after")
    store.after_commit(results.append)
    scheduled.run_pending()
    assert results[2:] == [None]
    assert session_ids(db_path) == {"before", "after"}


def test_a_write_that_makes_sqlite_abandon_the_transaction_fails_the_whole_batch(scheduled, db_path):
    store, results, rolled_back = scheduled.store, [], []
    store.on_rollback(lambda: rolled_back.append(True))
    with store.write() as db:
        add(db, "a")
    store.after_commit(results.append)

    # A tiny page cache makes the big row spill to the WAL mid-statement, which the
    # file size limit turns into an I/O error inside the write block.
    store.db.execute("PRAGMA cache_size = 2")
    with pytest.raises(sqlite3.Error), _wal_cannot_grow(store), store.write() as db:
        _big_row(db)
    store.db.execute("PRAGMA cache_size = -2000")

    assert len(results) == 1 and isinstance(results[0], StorageError)
    assert rolled_back == [True]
    assert not store.in_transaction
    scheduled.run_pending()  # the scheduled flush finds nothing to commit
    assert session_ids(db_path) == set()


# --- coalesced project activity ---------------------------------------------------------


def project_activity(path: Path) -> float:
    db = other_connection(path)
    try:
        return db.execute("SELECT last_activity FROM projects WHERE project_id = 'p'").fetchone()[0]
    finally:
        db.close()


def test_project_activity_is_written_once_per_delay_on_reads_and_on_close(db_path):
    flushes: list[Callable[[], None]] = []
    timers: list[tuple[float, Callable[[], None]]] = []
    store = Store(db_path, schedule=flushes.append, schedule_later=lambda delay, fn: timers.append((delay, fn)))

    def commit() -> None:
        while flushes:
            flushes.pop(0)()

    with store.write() as db:
        db.execute("INSERT INTO projects VALUES ('p', '/p', 'p', NULL, 1.0, 1.0)")
    commit()
    for at in (5.0, 6.0):  # two batches of writes to the project
        with store.write():
            store.note_project_activity("p", at)
        commit()
    assert project_activity(db_path) == 1.0
    assert [delay for delay, _ in timers] == [omnid.store.ACTIVITY_DELAY], "one timer for any number of bumps"

    timers.pop()[1]()  # the delay is over
    commit()
    assert project_activity(db_path) == 6.0

    store.note_project_activity("p", 7.0)
    store.settle_project_activity()  # what a read of projects does first
    assert store.db.execute("SELECT last_activity FROM projects").fetchone() == (7.0,)
    commit()
    assert project_activity(db_path) == 7.0

    store.note_project_activity("p", 3.0)  # never moves back
    store.note_project_activity(None, 9.0)  # a session outside any project
    store.settle_project_activity()
    commit()
    assert project_activity(db_path) == 7.0

    store.note_project_activity("p", 8.0)
    store.close()
    assert project_activity(db_path) == 8.0


# --- search rows wait for the commit ---------------------------------------------------


def index(db: sqlite3.Connection, kind: str, ref_id: str, body: str, session_id: str = "s") -> None:
    search.index(db, kind, ref_id, body, session_id=session_id, project_id=None, created_at=1.0)


def indexed(path: Path) -> list[tuple]:
    """(kind, ref_id, body) of every committed search row, as another connection sees them."""
    db = other_connection(path)
    try:
        return db.execute("SELECT kind, ref_id, body FROM search_index ORDER BY kind, ref_id, body").fetchall()
    finally:
        db.close()


def test_a_batch_indexes_its_search_rows_when_it_commits_without_those_of_a_failed_write(scheduled, db_path):
    store = scheduled.store
    with store.write() as db:
        index(db, "message", "1", "first words")
    with pytest.raises(RuntimeError), store.write() as db:
        index(db, "message", "2", "doomed words")
        raise RuntimeError("request handler failed")
    with store.write() as db:
        index(db, "message", "3", "third words")
    assert indexed(db_path) == []

    scheduled.run_pending()

    assert indexed(db_path) == [("message", "1", "first words"), ("message", "3", "third words")]
    assert store.db.pending_search_rows == []


def test_a_search_in_the_open_transaction_finds_the_rows_added_before_it_once(scheduled, db_path):
    store = scheduled.store
    with store.write() as db:
        index(db, "message", "1", "needle one")
    with store.write() as db:
        index(db, "decision", "2", "needle two")

    hits = search.query(store.db, "needle", project_id=None, session_id=None, kinds=None, limit=10, now=2.0)
    assert sorted(h.ref_id for h in hits) == ["1", "2"]
    with store.write() as db:
        index(db, "message", "3", "needle three")
    scheduled.run_pending()

    assert [ref for _, ref, _ in indexed(db_path)] == ["2", "1", "3"]


def test_unindexing_in_the_open_transaction_also_drops_rows_still_waiting(scheduled, db_path):
    store = scheduled.store
    with store.write() as db:
        index(db, "memory", "m1", "committed value")
        index(db, "message", "9", "in a session that goes", session_id="gone")
    scheduled.run_pending()

    with store.write() as db:  # a memory replaced twice in one batch, as memory.put does
        search.unindex(db, "memory", ["m1"])
        index(db, "memory", "m1", "second value")
    with store.write() as db:
        search.unindex(db, "memory", ["m1"])
        index(db, "memory", "m1", "third value")
        index(db, "message", "10", "also in the session that goes", session_id="gone")
    with store.write() as db:
        search.unindex_sessions(db, ["gone"])
    scheduled.run_pending()

    assert indexed(db_path) == [("memory", "m1", "third value")]


def test_a_failed_write_that_unindexed_gives_back_the_rows_it_dropped(scheduled, db_path):
    store = scheduled.store
    with store.write() as db:
        index(db, "memory", "m1", "kept value")
        index(db, "message", "1", "kept words")
    with pytest.raises(RuntimeError), store.write() as db:
        search.unindex(db, "memory", ["m1"])
        search.unindex_sessions(db, ["s"])
        index(db, "memory", "m1", "doomed value")
        raise RuntimeError("request handler failed")
    scheduled.run_pending()

    assert indexed(db_path) == [("memory", "m1", "kept value"), ("message", "1", "kept words")]


def test_a_failed_commit_leaves_no_search_rows_for_the_next_batch(scheduled, db_path):
    store, results = scheduled.store, []
    _prepare_deferred_fk(store)
    with store.write() as db:
        index(db, "message", "1", "lost with its batch")
        _orphan_row(db)
    store.after_commit(results.append)
    scheduled.run_pending()
    assert isinstance(results[0], StorageError)

    with store.write() as db:
        index(db, "message", "2", "the next batch")
    scheduled.run_pending()

    assert indexed(db_path) == [("message", "2", "the next batch")]


# --- paging ---------------------------------------------------------------------


@pytest.fixture
def many(store) -> list[Session]:
    """25 sessions with distinct start times, of two tools and types, some ended;
    returned newest first."""
    made = []
    for i in range(25):
        s = make_session(
            tool_id="alpha" if i % 2 else "beta",
            session_type="chat" if i % 3 == 0 else "default",
            workspace=f"/w{i % 4}",
            owner_pid=10_000 + i,
            started_at=store.now(),
        )
        if i % 5 == 0:
            s.ended_at, s.end_reason = s.started_at + 1, "ended"
        q.insert(store.db, s, dedup=True)
        made.append(s)
    return made[::-1]


def walk_one(db: sqlite3.Connection, *, limit: int, cursor: str | None = None):
    """One unfiltered page: (sessions, next cursor)."""
    return q.page(db, tool_id=None, session_type=None, status="all", workspace=None, limit=limit, cursor=cursor)


def walk(db: sqlite3.Connection, *, limit: int, tool_id=None, session_type=None, status="all", workspace=None):
    """Every page in turn; returns the pages (as lists of ids)."""
    pages, cursor = [], None
    while True:
        sessions, cursor = q.page(
            db, tool_id=tool_id, session_type=session_type, status=status, workspace=workspace,
            limit=limit, cursor=cursor,
        )
        pages.append([s.session_id for s in sessions])
        if cursor is None:
            return pages
        assert len(pages) < 100, "paging does not end"


def test_pages_walk_every_session_once_newest_first(store, many):
    pages = walk(store.db, limit=10)
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [sid for page in pages for sid in page]
    assert flat == [s.session_id for s in many]


def test_a_page_that_fits_exactly_has_no_cursor(store, many):
    sessions, cursor = walk_one(store.db, limit=25)
    assert len(sessions) == 25 and cursor is None


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"tool_id": "alpha"}, lambda s: s.tool_id == "alpha"),
        ({"session_type": "chat"}, lambda s: s.session_type == "chat"),
        ({"workspace": "/w1"}, lambda s: s.workspace == "/w1"),
        ({"status": "live"}, lambda s: s.ended_at is None),
        ({"status": "ended"}, lambda s: s.ended_at is not None),
        ({"tool_id": "beta", "status": "live"}, lambda s: s.tool_id == "beta" and s.ended_at is None),
    ],
    ids=lambda v: ",".join(f"{k}={w}" for k, w in v.items()) if isinstance(v, dict) else "",
)
def test_filters_apply_across_pages(store, many, filters, keep):
    expected = [s.session_id for s in many if keep(s)]
    assert expected, "the fixture must have matching sessions"
    flat = [sid for page in walk(store.db, limit=3, **filters) for sid in page]
    assert flat == expected


def test_sessions_started_at_the_same_instant_are_neither_skipped_nor_repeated(store):
    ids = sorted(insert(store.db, owner_pid=i, started_at=1234.5).session_id for i in range(7))
    flat = [sid for page in walk(store.db, limit=2) for sid in page]
    assert flat == ids[::-1]


def _b64(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode()


@pytest.mark.parametrize(
    "cursor",
    ["not a cursor", "!!!", "", "é", _b64(b"no separator"), _b64(b"soon|abc"), _b64(b"\xff\xfe|x")],
)
def test_a_garbage_cursor_is_invalid(store, many, cursor):
    with pytest.raises(Invalid):
        walk_one(store.db, limit=10, cursor=cursor)


def test_every_daemon_package_is_listed_for_installation():
    """A non-editable install (as in CI) ships only the packages each pyproject.toml lists:
    omnid's, and the client's own (omnid depends on omnid-client, never bundles it)."""
    import tomllib

    for top, package in ((ROOT, ROOT / "omnid"), (ROOT / "client", ROOT / "client" / "omnid_client")):
        listed = set(tomllib.loads((top / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
        found = {".".join(init.parent.relative_to(top).parts) for init in package.rglob("__init__.py")}
        assert found == listed, top
