"""Session context: one row per event appended, materialized into a view on read."""

from __future__ import annotations

import sqlite3

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


def insert(
    db: sqlite3.Connection, session_id: str, project_id: str | None, event: ContextEvent, created_at: float
) -> None:
    """One event row, and a decision in the search index too; the caller keeps the
    session's context_event_count."""
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


def count(db: sqlite3.Connection, session_id: str) -> int:
    """The session's context events, from the counter every insert keeps (0 for no session)."""
    row = db.execute("SELECT context_event_count FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return row[0] if row else 0


def materialize(db: sqlite3.Connection, p: GetContext) -> SessionContext:
    sid = p.session_id
    files = [
        FileContext(*row)
        for row in db.execute(
            "SELECT subject, max(coalesce(importance, 0.5)), count(*), min(created_at), max(created_at) "
            "FROM context_events WHERE session_id = ? AND kind = 'file_access' GROUP BY subject "
            "ORDER BY 2 DESC, 5 DESC LIMIT ?",
            (sid, p.max_files),
        )
    ]
    fields = "subject, created_at, detail"
    searches = [SearchContext(*row) for row in _recent(db, sid, "search", fields, p.max_searches)]
    decisions = [DecisionContext(*row) for row in _recent(db, sid, "decision", fields, p.max_decisions)]
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
            "SELECT subject, count(*), max(created_at), "
            "(SELECT detail FROM context_events c2 WHERE c2.session_id = c.session_id AND c2.kind = 'file_change' "
            " AND c2.subject = c.subject ORDER BY event_id DESC LIMIT 1) "
            "FROM context_events c WHERE session_id = ? AND kind = 'file_change' GROUP BY subject "
            "ORDER BY 3 DESC LIMIT ?",
            (sid, p.max_changes),
        )
    ]
    files_n, searches_n, decisions_n, changes_n, refs_n, events, size = db.execute(
        "SELECT count(DISTINCT CASE WHEN kind = 'file_access' THEN subject END), "
        "coalesce(sum(kind = 'search'), 0), coalesce(sum(kind = 'decision'), 0), "
        "count(DISTINCT CASE WHEN kind = 'file_change' THEN subject END), coalesce(sum(kind = 'memory_ref'), 0), "
        "count(*), coalesce(sum(length(subject) + coalesce(length(detail), 0)), 0) "
        "FROM context_events WHERE session_id = ?",
        (sid,),
    ).fetchone()
    memories_n = refs_n + db.execute("SELECT count(*) FROM session_memories WHERE session_id = ?", (sid,)).fetchone()[0]
    truncated = (
        files_n > p.max_files
        or searches_n > p.max_searches
        or decisions_n > p.max_decisions
        or changes_n > p.max_changes
        or memories_n > p.max_memories
    )
    return SessionContext(sid, files, searches, decisions, memories, changes, ContextSize(events, size, truncated))


def _recent(db: sqlite3.Connection, session_id: str, kind: str, columns: str, limit: int) -> list[tuple]:
    return db.execute(
        f"SELECT {columns} FROM context_events WHERE session_id = ? AND kind = ? ORDER BY event_id DESC LIMIT ?",
        (session_id, kind, limit),
    ).fetchall()
