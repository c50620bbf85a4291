"""Reads that must not grow with the database (migration 10): unindexing through
``search_refs``, the context view's totals kept by triggers, and the migration that adds
both to a populated database, on real database files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from omnid.store import Store, context, search
from omnid.store.failures import StoreError
from omnid.store.migrations import LATEST, MIGRATIONS, apply
from omnid_client.protocol import ContextEvent, GetContext

SESSIONS = ("s1", "s2")


def add_sessions(db: sqlite3.Connection) -> None:
    for sid in SESSIONS:
        db.execute(
            "INSERT INTO sessions (session_id, tool_id, session_type, started_at, last_activity) "
            "VALUES (?, 't', 'default', 1.0, 1.0)",
            (sid,),
        )


def refs_in_step(db: sqlite3.Connection) -> None:
    """search_refs says where every indexed row is, and nothing else."""
    indexed = db.execute("SELECT kind, ref_id, rowid, session_id FROM search_index ORDER BY rowid").fetchall()
    refs = db.execute("SELECT kind, ref_id, row, session_id FROM search_refs ORDER BY row").fetchall()
    assert refs == indexed


def vm_steps(db: sqlite3.Connection, action: Callable[[], None]) -> int:
    """SQLite virtual-machine instructions ``action`` runs (in hundreds)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db.set_progress_handler(count, 100)
    try:
        action()
    finally:
        db.set_progress_handler(None, 0)
    return steps[0]


def test_unindexing_deletes_by_rowid_and_keeps_the_refs_in_step(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    try:
        with store.write() as db:
            add_sessions(db)
            for n in range(20):
                search.index(db, "message", str(n), f"words {n}", session_id=SESSIONS[n % 2], project_id=None,
                             created_at=1.0)
            search.index(db, "memory", "m1", "a memory", session_id=None, project_id="p", created_at=1.0)
        refs_in_step(store.db)

        def unindex_one() -> None:
            with store.write() as db:
                search.unindex(db, "memory", ["m1"])

        small = vm_steps(store.db, unindex_one)
        with store.write() as db:
            for n in range(20, 5000):
                search.index(db, "message", str(n), f"more words {n}", session_id="s2", project_id=None,
                             created_at=1.0)
            search.index(db, "memory", "m1", "a memory again", session_id=None, project_id="p", created_at=1.0)
        big = vm_steps(store.db, unindex_one)
        assert big < 2 * small + 20, f"unindexing one memory ran {big} vs {small} hundred instructions"

        with store.write() as db:
            search.unindex_sessions(db, ["s1"])
        refs_in_step(store.db)
        assert store.db.execute("SELECT count(*) FROM search_index WHERE session_id = 's1'").fetchone() == (0,)
        assert store.db.execute("SELECT count(*) FROM search_index").fetchone() == (4990,)
    finally:
        store.close()


def test_deferred_rows_moved_into_the_index_get_their_refs(tmp_path: Path):
    soon: list[Callable[[], None]] = []
    later: list[Callable[[], None]] = []
    store = Store(tmp_path / "omnid.db", schedule=soon.append, schedule_later=lambda _, fn: later.append(fn))
    try:
        for n in range(3):
            with store.write() as db:
                search.index(db, "decision", str(n), f"decided {n}", session_id="s", project_id=None, created_at=1.0)
            soon.pop()()
        assert store.db.execute("SELECT count(*) FROM search_pending").fetchone() == (3,)
        assert search.query(store.db, "decided", project_id=None, session_id=None, kinds=None, limit=5, now=2.0)
        refs_in_step(store.db)  # the search's own transient indexing left nothing behind
        later.pop()()
        assert store.db.execute("SELECT count(*) FROM search_refs").fetchone() == (3,)
        refs_in_step(store.db)
    finally:
        store.close()


def totals(db: sqlite3.Connection, sid: str) -> dict[str, tuple[int, int, int]]:
    return {k: (s, e, b) for k, s, e, b in db.execute(
        "SELECT kind, subjects, events, bytes FROM context_totals WHERE session_id = ?", (sid,))}


def counted(db: sqlite3.Connection, sid: str) -> dict[str, tuple[int, int, int]]:
    """The totals as reading every row gives them."""
    found = {k: (s, e, b) for k, s, e, b in db.execute(
        "SELECT kind, count(*), sum(events), sum(bytes) FROM context_rollup WHERE session_id = ? GROUP BY kind",
        (sid,))}
    n, size = db.execute(
        "SELECT count(*), sum(length(subject) + coalesce(length(detail), 0)) FROM context_events "
        "WHERE session_id = ? AND kind = 'decision'", (sid,)).fetchone()
    if n:
        found["decision"] = (n, n, size)
    return found


def test_the_context_totals_follow_appends_compaction_and_deletes(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    db = store.db
    try:
        with store.write() as w:
            add_sessions(w)
            for n in range(30):
                context.append(w, "s1", None, [
                    ContextEvent("file_access", f"f{n % 7}.py", importance=(n % 10) / 10),
                    ContextEvent("file_change", f"f{n % 3}.py", detail="x" * n),
                    ContextEvent("search", f"query {n % 5}"),
                    ContextEvent("decision", f"decision {n}", detail=None if n % 2 else "why"),
                ], float(n))
            context.append(w, "s2", None, [ContextEvent("decision", "theirs")], 1.0)
        assert totals(db, "s1") == counted(db, "s1") and totals(db, "s1")["decision"][0] == 30
        view = context.materialize(db, GetContext("s1", max_files=3, max_decisions=40))
        # Three files reach importance .9; the one used last comes first.
        assert [(f.path, f.importance, f.last_access) for f in view.files] == [
            ("f1.py", 0.9, 29.0), ("f5.py", 0.9, 26.0), ("f2.py", 0.9, 23.0)]
        assert view.size.truncated and view.size.events == 120

        with store.write() as w:
            assert context.fold(w, "s1", keep=2, before=None) > 0
        assert totals(db, "s1") == counted(db, "s1")
        after = context.materialize(db, GetContext("s1", max_files=3, max_decisions=40))
        assert (after.size.events, after.size.bytes, after.files) == (view.size.events, view.size.bytes, view.files)
        assert after.size.folded > 0

        with store.write() as w:
            w.execute("DELETE FROM sessions WHERE session_id = 's1'")
        assert totals(db, "s1") == {} and totals(db, "s2") == counted(db, "s2") == {"decision": (1, 1, 6)}
    finally:
        store.close()


def v9_database(path: Path) -> None:
    """A database as omnid left it at schema 9, with search rows, a rollup and decisions."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = wal")
        db.execute("BEGIN")
        for migration in MIGRATIONS[:9]:
            apply(db, migration)
        db.execute("PRAGMA user_version = 9")
        add_sessions(db)
        for n in range(40):
            sid = SESSIONS[n % 2]
            db.execute("INSERT INTO search_index (body, kind, ref_id, session_id, project_id, created_at) "
                       "VALUES (?, 'message', ?, ?, NULL, 1.0)", (f"old words {n}", str(n), sid))
            db.execute("INSERT INTO context_events (session_id, kind, subject, detail, created_at) "
                       "VALUES (?, 'decision', ?, ?, 1.0)", (sid, f"decision {n}", "d" * n))
            db.execute("INSERT INTO context_rollup (session_id, kind, subject, events, bytes, first_at, last_at, "
                       "max_importance) VALUES (?, 'file_access', ?, ?, ?, 1.0, 2.0, 0.5)", (sid, f"f{n}", n + 1, n))
        db.execute("INSERT INTO search_index (body, kind, ref_id, session_id, project_id, created_at) "
                   "VALUES ('a memory', 'memory', 'm1', NULL, 'p', 1.0)")
        db.execute("COMMIT")
    finally:
        db.close()


def test_migration_10_brings_a_populated_database_along_and_can_be_run_again(tmp_path: Path, monkeypatch):
    path = tmp_path / "omnid.db"
    v9_database(path)
    import omnid.store

    # A failure half-way leaves schema 9 whole (one transaction); the next start migrates.
    broken = [*MIGRATIONS[:9], [*MIGRATIONS[9][:-1], "NOT SQL"]]
    monkeypatch.setattr(omnid.store, "MIGRATIONS", broken)
    with pytest.raises(StoreError, match="left at v9"):
        Store(path)
    monkeypatch.undo()

    store = Store(path)
    db = store.db
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (LATEST,)
        refs_in_step(db)
        assert db.execute("SELECT count(*) FROM search_refs").fetchone() == (41,)
        for sid in SESSIONS:
            assert totals(db, sid) == counted(db, sid) and totals(db, sid)["decision"][0] == 20
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'context_decision_bytes'").fetchone() == (0,)
        with store.write() as w:
            search.unindex(w, "memory", ["m1"])
            search.unindex_sessions(w, ["s1"])
        refs_in_step(db)
        assert [r[0] for r in db.execute("SELECT DISTINCT session_id FROM search_index")] == ["s2"]
    finally:
        store.close()
