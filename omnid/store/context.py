"""Session context: one row per event appended, materialized into a view on read."""

from __future__ import annotations

import sqlite3
from typing import Iterable

from omnid_client.protocol import (
    ContextEvent,
    ContextSize,
    DecisionContext,
    FileChange,
    FileContext,
    GetContext,
    MemoryContext,
    SearchContext,
    SessionContext,
)

from . import search as search_store
from .events import stage


def append(
    db: sqlite3.Connection, session_id: str, project_id: str | None, events: list[ContextEvent], now: float
) -> None:
    """Add the events, counting them and noting the activity on the session's row."""
    for event in events:
        insert(db, session_id, project_id, event, now)
    db.execute(
        "UPDATE sessions SET context_event_count = context_event_count + ?, last_activity = ? WHERE session_id = ?",
        (len(events), now, session_id),
    )
    counts: dict[str, int] = {}
    for event in events:
        counts[event.kind] = counts.get(event.kind, 0) + 1
    stage(db, "context.appended", session_id=session_id, project_id=project_id, appended=len(events), kinds=counts)


ROLLED_UP = ("file_access", "file_change", "search", "memory_ref")
"""Kinds kept per subject in ``context_rollup`` too; decisions stay rows only (they are
content, indexed for search, and never folded)."""
LISTED_KEEP = 1000
"""Compaction never folds the newest this-many searches and memory refs of a session: the
view lists them one by one (up to a Limit of 1000 each), so they stay exactly as they were."""

_ROLLUP_UPSERT = (
    "INSERT INTO context_rollup (session_id, kind, subject, events, bytes, first_at, last_at, max_importance, "
    "last_detail) VALUES (?,?,?,1,?,?,?,?,?) ON CONFLICT (session_id, kind, subject) DO UPDATE SET "
    "events = events + 1, bytes = bytes + excluded.bytes, first_at = min(first_at, excluded.first_at), "
    "last_at = max(last_at, excluded.last_at), max_importance = max(max_importance, excluded.max_importance), "
    "last_detail = excluded.last_detail"
)


def _size(subject: str, detail: str | None) -> int:
    return len(subject) + (len(detail) if detail is not None else 0)


def rollup_rows(rows: Iterable[tuple[str, float | None, str | None, float]]) -> list[tuple]:
    """(subject, events, bytes, first_at, last_at, max_importance, last_detail) per subject of
    (subject, importance, detail, created_at) rows given in the order they were added."""
    aggs: dict[str, list] = {}
    for subject, importance, detail, at in rows:
        imp = 0.5 if importance is None else importance
        agg = aggs.get(subject)
        if agg is None:
            aggs[subject] = [1, _size(subject, detail), at, at, imp, detail]
        else:
            agg[0] += 1
            agg[1] += _size(subject, detail)
            agg[2] = min(agg[2], at)
            agg[3] = max(agg[3], at)
            agg[4] = max(agg[4], imp)
            agg[5] = detail
    return [(subject, *agg) for subject, agg in aggs.items()]


def insert(
    db: sqlite3.Connection, session_id: str, project_id: str | None, event: ContextEvent, created_at: float
) -> None:
    """One event row (and its rollup, or for a decision its search row); the caller keeps
    the session's context_event_count."""
    cur = db.execute(
        "INSERT INTO context_events (session_id, kind, subject, importance, detail, created_at) "
        "VALUES (?,?,?,?,?,?)",
        (session_id, event.kind, event.subject, event.importance, event.detail, created_at),
    )
    if event.kind == "decision":
        assert cur.lastrowid is not None  # set by every INSERT
        body = event.subject if event.detail is None else f"{event.subject}\n{event.detail}"
        search_store.index(
            db, "decision", cur.lastrowid, body, session_id=session_id, project_id=project_id, created_at=created_at
        )
    else:
        importance = 0.5 if event.importance is None else event.importance
        db.execute(
            _ROLLUP_UPSERT,
            (session_id, event.kind, event.subject, _size(event.subject, event.detail), created_at, created_at,
             importance, event.detail),
        )


def count(db: sqlite3.Connection, session_id: str) -> int:
    """The session's context events, from the counter every insert keeps (0 for no session)."""
    row = db.execute("SELECT context_event_count FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return row[0] if row else 0


def materialize(db: sqlite3.Connection, p: GetContext) -> SessionContext:
    """The session's context view: files and changes from the rollup (so folded events
    still count), the newest searches, decisions and memory refs from their rows."""
    sid = p.session_id
    files = [
        FileContext(*row)
        for row in db.execute(
            "SELECT subject, max_importance, events, first_at, last_at FROM context_rollup "
            "WHERE session_id = ? AND kind = 'file_access' ORDER BY max_importance DESC, last_at DESC LIMIT ?",
            (sid, p.max_files),
        )
    ]
    text_columns = "subject, created_at, detail"
    searches = [SearchContext(*row) for row in _recent(db, sid, "search", text_columns, p.max_searches)]
    decisions = [DecisionContext(*row) for row in _recent(db, sid, "decision", text_columns, p.max_decisions)]
    memories = [
        MemoryContext(ref, at, source, memory_type, content)
        for ref, at, source, memory_type, content in db.execute(
            "SELECT subject, created_at, 'memory_ref', NULL, detail FROM context_events "
            "WHERE session_id = ? AND kind = 'memory_ref' "
            "UNION ALL SELECT memory_id, created_at, 'session_memory', memory_type, content "
            "FROM session_memories WHERE session_id = ? ORDER BY 2 DESC LIMIT ?",
            (sid, sid, p.max_memories),
        )
    ]
    changes = [
        FileChange(path, change, n, at)
        for path, n, at, change in db.execute(
            "SELECT subject, events, last_at, last_detail FROM context_rollup "
            "WHERE session_id = ? AND kind = 'file_change' ORDER BY 3 DESC LIMIT ?",
            (sid, p.max_changes),
        )
    ]
    # Totals kept by triggers (migration 10): reading every subject and decision here made
    # the view grow with the session.
    counts = {kind: (subjects, events, size) for kind, subjects, events, size in db.execute(
        "SELECT kind, subjects, events, bytes FROM context_totals WHERE session_id = ?", (sid,)
    )}
    row = db.execute("SELECT context_event_count, context_folded FROM sessions WHERE session_id = ?", (sid,)).fetchone()
    events, folded = row if row else (0, 0)
    files_n = counts.get("file_access", (0, 0, 0))[0]
    changes_n = counts.get("file_change", (0, 0, 0))[0]
    decisions_n = counts.get("decision", (0, 0, 0))[0]
    searches_n = counts.get("search", (0, 0, 0))[1]
    refs_n = counts.get("memory_ref", (0, 0, 0))[1]
    size = sum(c[2] for c in counts.values())
    memories_n = refs_n + db.execute("SELECT count(*) FROM session_memories WHERE session_id = ?", (sid,)).fetchone()[0]
    truncated = (
        files_n > p.max_files
        or searches_n > p.max_searches
        or decisions_n > p.max_decisions
        or changes_n > p.max_changes
        or memories_n > p.max_memories
    )
    size_info = ContextSize(events, size, truncated, folded)
    return SessionContext(sid, files, searches, decisions, memories, changes, size_info)


def _recent(db: sqlite3.Connection, session_id: str, kind: str, columns: str, limit: int) -> list[tuple]:
    return db.execute(
        f"SELECT {columns} FROM context_events WHERE session_id = ? AND kind = ? ORDER BY event_id DESC LIMIT ?",
        (session_id, kind, limit),
    ).fetchall()


# --- compaction -----------------------------------------------------------------------------

_FOLD_UPDATE = (
    "UPDATE context_rollup SET folded = folded + ?, folded_bytes = folded_bytes + ?, "
    "folded_first_at = min(coalesce(folded_first_at, ?), ?), folded_last_at = max(coalesce(folded_last_at, ?), ?), "
    "folded_max_importance = max(coalesce(folded_max_importance, ?), ?), folded_last_detail = ? "
    "WHERE session_id = ? AND kind = ? AND subject = ?"
)


def fold(db: sqlite3.Connection, session_id: str, *, keep: int, before: float | None) -> int:
    """Fold the session's events that are not among the newest ``keep`` of their kind (``keep``
    0: no limit by count), or were added before ``before``, into the rollup's folded_* columns,
    deleting their rows: the view and the pack read the rollup, so they do not change.
    Decisions are never folded, nor the newest ``LISTED_KEEP`` searches and memory refs.
    Runs inside the caller's transaction; returns how many events were folded."""
    total = 0
    for kind in ROLLED_UP:
        conditions: list[str] = []
        args: list[object] = []
        if keep:
            bound = _nth_newest(db, session_id, kind, keep)
            if bound is not None:
                conditions.append("event_id < ?")
                args.append(bound)
        if before is not None:
            conditions.append("created_at < ?")
            args.append(before)
        if not conditions:
            continue
        where = f"session_id = ? AND kind = ? AND ({' OR '.join(conditions)})"
        args = [session_id, kind, *args]
        if kind in ("search", "memory_ref"):
            listed = _nth_newest(db, session_id, kind, LISTED_KEEP)
            if listed is None:
                continue
            where += " AND event_id < ?"
            args.append(listed)
        rows = db.execute(
            f"SELECT subject, importance, detail, created_at FROM context_events WHERE {where} ORDER BY event_id", args
        )
        aggs = rollup_rows(rows)
        if not aggs:
            continue
        db.executemany(
            _FOLD_UPDATE,
            [(n, size, first, first, last, last, imp, imp, detail, session_id, kind, subject)
             for subject, n, size, first, last, imp, detail in aggs],
        )
        n = db.execute(f"DELETE FROM context_events WHERE {where}", args).rowcount
        total += n
    if total:
        db.execute("UPDATE sessions SET context_folded = context_folded + ? WHERE session_id = ?", (total, session_id))
    return total


def _nth_newest(db: sqlite3.Connection, session_id: str, kind: str, n: int) -> int | None:
    """The event id of the session's ``n``-th newest event of ``kind`` (None: fewer exist)."""
    row = db.execute(
        "SELECT event_id FROM context_events WHERE session_id = ? AND kind = ? ORDER BY event_id DESC LIMIT 1 OFFSET ?",
        (session_id, kind, n - 1),
    ).fetchone()
    return row[0] if row else None


def raw_count(db: sqlite3.Connection, session_id: str) -> int:
    row = db.execute(
        "SELECT context_event_count - context_folded FROM sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    return row[0] if row else 0


def folds(db: sqlite3.Connection, session_id: str) -> list[tuple]:
    """The folded part of each subject: (kind, subject, events, bytes, first_at, last_at,
    max_importance, last_detail), in a stable order."""
    return db.execute(
        "SELECT kind, subject, folded, folded_bytes, folded_first_at, folded_last_at, folded_max_importance, "
        "folded_last_detail FROM context_rollup WHERE session_id = ? AND folded > 0 ORDER BY kind, subject",
        (session_id,),
    ).fetchall()


def add_fold(
    db: sqlite3.Connection, session_id: str, kind: str, subject: str, events: int, size: int,
    first_at: float, last_at: float, max_importance: float, last_detail: str | None,
) -> bool:
    """Restore a folded aggregate from an export, before the session's remaining events: as if
    its events had been added and folded. False if the subject already has a rollup row."""
    cur = db.execute(
        "INSERT INTO context_rollup (session_id, kind, subject, events, bytes, first_at, last_at, max_importance, "
        "last_detail, folded, folded_bytes, folded_first_at, folded_last_at, folded_max_importance, "
        "folded_last_detail) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (session_id, kind, subject) DO NOTHING",
        (session_id, kind, subject, events, size, first_at, last_at, max_importance, last_detail,
         events, size, first_at, last_at, max_importance, last_detail),
    )
    if cur.rowcount == 0:
        return False
    db.execute(
        "UPDATE sessions SET context_folded = context_folded + ?, context_event_count = context_event_count + ? "
        "WHERE session_id = ?",
        (events, events, session_id),
    )
    return True
