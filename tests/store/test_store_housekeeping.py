"""The store's housekeeping and error reporting on real files and real SQLite errors: which
errors mean a damaged file, the StorageError a failed write becomes, the once-a-minute
failure log, setting a damaged database aside, file sizes, durability, disk hints."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

import omnid.store
from omnid.store import Store, disk_hint, is_corruption, storage_error
from omnid.store.failures import set_aside
from omnid_client import StorageError


def sqlite_error(make) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as exc:
        make()
    return exc.value


def not_a_database(tmp_path: Path) -> sqlite3.Error:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database file at all" * 200)
    return sqlite_error(lambda: sqlite3.connect(path).execute("SELECT * FROM sqlite_master").fetchall())


def locked(tmp_path: Path) -> sqlite3.Error:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    try:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        return sqlite_error(lambda: other.execute("BEGIN IMMEDIATE"))
    finally:
        holder.execute("ROLLBACK")


def test_a_file_that_is_not_a_database_is_corruption(tmp_path):
    e = not_a_database(tmp_path)
    assert e.sqlite_errorcode == 26 and is_corruption(e)


def test_a_damaged_page_is_corruption(tmp_path):
    path = tmp_path / "damaged.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 100)
    db.commit()
    db.close()
    with open(path, "r+b") as f:  # scribble over the table's pages, keep the header
        f.seek(4096)
        f.write(b"\xff" * 8192)
    e = sqlite_error(lambda: sqlite3.connect(path).execute("SELECT count(*), max(x) FROM t").fetchall())
    assert e.sqlite_errorcode & 0xFF in (11, 26) and is_corruption(e)


def test_a_busy_database_is_not_corruption(tmp_path):
    e = locked(tmp_path)
    assert e.sqlite_errorcode == 5 and not is_corruption(e)


@pytest.mark.parametrize("message, corrupt", [
    ("database disk image is malformed", True),
    ("file is not a database", True),
    ("no such table: t", False),
])
def test_without_an_error_code_the_message_tells(message, corrupt):
    assert is_corruption(sqlite3.DatabaseError(message)) is corrupt


def test_a_failed_write_becomes_a_storage_error_naming_sqlites_error(tmp_path):
    err = storage_error(locked(tmp_path))
    assert str(err) == "database write failed: database is locked"
    assert err.details == {"sqlite_error": "SQLITE_BUSY"}
    plain = storage_error(sqlite3.OperationalError("disk I/O error"))
    assert plain.details == {"sqlite_error": "OperationalError"}


def test_the_same_commit_failure_is_logged_once_a_minute_with_a_count(store, caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(omnid.store.time, "monotonic", lambda: clock[0])
    full = sqlite3.OperationalError("database or disk is full")
    with caplog.at_level(logging.ERROR, logger="omnid.store"):
        for _ in range(3):
            store._log_failure(full)
            clock[0] += 1
        assert [r.getMessage() for r in caplog.records] == ["commit failed: database or disk is full"]
        store._log_failure(sqlite3.OperationalError("disk I/O error"))  # another failure: logged at once
        assert caplog.records[-1].getMessage() == (
            "commit failed: disk I/O error (after 2 more time(s) of: database or disk is full)"
        )
        store._log_failure(full)
        assert caplog.records[-1].getMessage() == "commit failed: database or disk is full"
        store._log_failure(full)
        clock[0] += 59.5
        store._log_failure(full)  # within the minute of the last one logged
        assert len(caplog.records) == 3
        clock[0] += 1
        store._log_failure(full)
    assert caplog.records[-1].getMessage() == (
        "commit failed: database or disk is full (and 2 more time(s) in the last minute)"
    )
    assert len(caplog.records) == 4


def test_set_aside_moves_a_database_and_its_wal_and_shm_side_by_side(tmp_path):
    db = tmp_path / "omnid.db"
    contents = {"": b"main", "-wal": b"wal", "-shm": b"shm"}
    for suffix, data in contents.items():
        Path(f"{db}{suffix}").write_bytes(data)
    moved = set_aside(db)
    stem = moved[0].name
    assert stem.startswith("omnid.db.corrupt-")
    assert {p.name: p.read_bytes() for p in moved} == {stem + s: data for s, data in contents.items()}
    assert moved[0].read_bytes() == b"main", "the database comes first"
    assert not any(Path(f"{db}{s}").exists() for s in contents)
    # A second damaged file in the same second gets its own name, and nothing is overwritten.
    db.write_bytes(b"second")
    again = set_aside(db)
    assert len(again) == 1 and again[0] not in moved and again[0].read_bytes() == b"second"
    assert sorted(p.read_bytes() for p in moved) == sorted(contents.values())
    assert set_aside(db) == [], "nothing there, nothing moved"


def test_set_aside_names_a_third_file_in_the_same_second_apart_from_both(tmp_path):
    db = tmp_path / "omnid.db"
    names = set()
    for i in range(3):
        db.write_bytes(b"%d" % i)
        Path(f"{db}-wal").write_bytes(b"w%d" % i)
        names.update(p.name for p in set_aside(db))
    assert len(names) == 6


def test_file_sizes_are_the_database_and_wal_on_disk(store):
    with store.write() as db:
        db.execute("CREATE TABLE filler (x)")
        db.execute("INSERT INTO filler VALUES (zeroblob(100000))")
    main, wal = store.file_sizes()
    assert main == os.path.getsize(store.path) and wal == os.path.getsize(f"{store.path}-wal") > 100000


def test_file_sizes_of_missing_files_are_zero(tmp_path):
    s = Store(tmp_path / "omnid.db")
    s.close()  # a clean close truncates the WAL
    assert s.file_sizes()[1] == 0
    os.unlink(s.path)
    assert s.file_sizes() == (0, 0)


@pytest.mark.parametrize("level, name", [(0, "off"), (1, "normal"), (2, "full"), (3, "extra")])
def test_durability_names_sqlites_synchronous_level(store, level, name):
    store.db.execute(f"PRAGMA synchronous = {level}")
    assert store.durability() == name


def test_set_durability_commits_first_and_then_applies(tmp_path):
    flushes: list = []
    store = Store(tmp_path / "omnid.db", schedule=flushes.append)
    try:
        with store.write() as db:
            db.execute("CREATE TABLE t (x)")
        assert store.in_transaction
        store.set_durability("full")
        assert not store.in_transaction and store.durability() == "full"
        store.set_durability("normal")
        assert store.durability() == "normal"
        with pytest.raises(KeyError):
            store.set_durability("fast")
    finally:
        store.close()


def test_disk_hints(tmp_path):
    assert disk_hint(tmp_path / "omnid.db") == ""
    assert disk_hint(tmp_path / "missing" / "omnid.db") == ""
    readonly = next((Path(p) for p in ("/proc/sys", "/sys") if os.statvfs(p).f_flag & os.ST_RDONLY), None)
    if readonly is None:
        pytest.skip("no read-only file system mounted here")
    assert disk_hint(readonly / "omnid.db") == f" (the file system holding {readonly} is read-only)"


def test_a_query_error_that_only_mentions_malformed_is_not_corruption(tmp_path):
    e = sqlite_error(lambda: sqlite3.connect(tmp_path / "x.db").execute("SELECT json('{')").fetchall())
    assert "malformed" in str(e) and e.sqlite_errorcode == 1
    assert not is_corruption(e), "the error code decides, not the wording"


def test_the_same_failure_a_minute_later_is_logged_again(store, caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(omnid.store.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.ERROR, logger="omnid.store"):
        store._log_failure("database or disk is full")
        clock[0] += 59.99
        store._log_failure("database or disk is full")
        assert len(caplog.records) == 1, "within the minute"
        clock[0] += 0.01  # a minute after the line logged
        store._log_failure("database or disk is full")
    assert [r.getMessage() for r in caplog.records] == [
        "commit failed: database or disk is full",
        "commit failed: database or disk is full (and 1 more time(s) in the last minute)",
    ]


def test_set_aside_names_by_utc_time_and_steps_past_any_leftover_of_the_same_name(tmp_path, monkeypatch):
    import time as real_time

    frozen = real_time.gmtime(1_700_000_000)  # 2023-11-14T22:13:20Z
    monkeypatch.setattr(omnid.store.time, "gmtime", lambda *args: frozen)
    db = tmp_path / "omnid.db"
    stem = "omnid.db.corrupt-20231114T221320Z"
    # A leftover of any one of the three files takes a name; the next free one is used.
    for leftovers in (["", "-3"], ["-wal"], ["-shm"]):
        for path in tmp_path.glob("omnid.db.corrupt-*"):
            path.unlink()
        for name in leftovers:
            (tmp_path / (stem + name)).write_bytes(b"left")
        db.write_bytes(b"main")
        assert set_aside(db) == [tmp_path / f"{stem}-2"], leftovers
    db.write_bytes(b"main")
    assert set_aside(db) == [tmp_path / f"{stem}-3"], "the leftover and -2 are taken now"


@pytest.mark.parametrize("error, message, details", [
    (
        sqlite3.OperationalError("disk I/O error"),
        "database write failed: disk I/O error",
        {"sqlite_error": "OperationalError"},
    ),
    (ValueError("boom"), "write failed: boom", {}),
])
def test_a_batch_sqlite_abandoned_fails_its_waiters_with_a_storage_error(tmp_path, error, message, details):
    flushes: list = []
    store = Store(tmp_path / "omnid.db", schedule=flushes.append)
    got: list = []
    try:
        with pytest.raises(type(error)):
            with store.write() as db:
                store.after_commit(got.append)
                db.execute("ROLLBACK")  # as SQLite does on a full disk or an I/O error
                raise error
        assert len(got) == 1 and str(got[0]) == message and got[0].details == details
    finally:
        store.close()


def test_now_is_the_wall_clock_made_strictly_increasing(store):
    import time

    stamps = [store.now() for _ in range(1000)]
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))
    assert stamps[-1] - stamps[0] < 0.5, "each step is a microsecond at most past the clock"
    assert abs(store.now() - time.time()) < 0.5


def test_timestamps_stay_ordered_across_a_small_step_back_of_the_clock_and_follow_a_big_one(
    store, tmp_path, monkeypatch, caplog
):
    import time

    from omnid import clock

    skew = tmp_path / "skew"  # the clock's own test seam (OMNID_TEST_CLOCK_FILE): seconds added to it
    skew.write_text("0")
    monkeypatch.setattr(clock, "_SKEW_FILE", str(skew))
    first = store.now()
    skew.write_text("-0.9")
    assert store.now() == first + 1e-6, "less than a second back: a microsecond past the last one"
    assert store.now() == first + 2e-6
    skew.write_text("-5")
    with caplog.at_level(logging.WARNING, logger="omnid.store"):
        followed = store.now()
    assert first - 5.5 < followed < first - 3 and abs(followed - (time.time() - 5)) < 0.5
    [line] = caplog.messages
    back = float(line.removeprefix("the wall clock went back ").removesuffix("s; timestamps follow it"))
    assert back == pytest.approx(first + 2e-6 - followed, abs=1e-3)


def test_a_batch_whose_database_file_was_deleted_fails_its_waiters_and_is_rolled_back(tmp_path, caplog):
    flushes: list = []
    store = Store(tmp_path / "omnid.db", schedule=flushes.append)
    rebuilt: list[bool] = []
    store.on_rollback(lambda: rebuilt.append(True))
    try:
        with store.write() as db:
            db.execute("CREATE TABLE t (x)")
        told: list = []
        store.after_commit(told.append)
        os.unlink(store.path)
        store.guard.check(force=True)  # as the housekeeping tick does
        with caplog.at_level(logging.ERROR, logger="omnid.store"):
            store.flush()
        assert caplog.messages[-1] == f"commit failed: {store.guard.lost}"
        assert len(told) == 1 and isinstance(told[0], StorageError)
        assert told[0].details == {"reason": "database_gone"} and str(told[0]) == store.guard.lost
        assert f"the database file {store.path} was deleted while omnid was running" in str(told[0])
        assert not store.in_transaction and rebuilt == [True]
        assert store.db.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone() == (0,)
    finally:
        store.close()


def test_close_truncates_the_wal_even_while_another_process_reads_the_database(tmp_path):
    """Closing the last connection would checkpoint and remove the WAL anyway; with a reader
    (a backup, ``sqlite3`` in a shell) still open, only the store's own checkpoint does."""
    store = Store(tmp_path / "omnid.db")
    with store.write() as db:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    reader = sqlite3.connect(store.path)
    try:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (100,)
        assert store.file_sizes()[1] > 100_000
        store.close()
        assert os.path.getsize(f"{store.path}-wal") == 0
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (100,), "every row is in the file"
    finally:
        reader.close()
