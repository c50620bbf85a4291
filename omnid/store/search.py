"""The full-text index (FTS5) over messages, memories, session memories and decisions."""

from __future__ import annotations

import re
import sqlite3

from omnid_client.protocol import SearchHit

_TOKEN = re.compile(r"\w+", re.UNICODE)


def index(
    db: sqlite3.Connection,
    kind: str,
    ref_id: str | int,
    body: str,
    *,
    session_id: str | None,
    project_id: str | None,
    created_at: float,
) -> None:
    db.execute(
        "INSERT INTO search_index (body, kind, ref_id, session_id, project_id, created_at) VALUES (?,?,?,?,?,?)",
        (body, kind, str(ref_id), session_id, project_id, created_at),
    )


def unindex(db: sqlite3.Connection, kind: str, ref_ids: list[str]) -> None:
    for ref_id in ref_ids:
        db.execute("DELETE FROM search_index WHERE kind = ? AND ref_id = ?", (kind, ref_id))


def unindex_sessions(db: sqlite3.Connection, session_ids: list[str]) -> None:
    for sid in session_ids:
        db.execute("DELETE FROM search_index WHERE session_id = ?", (sid,))


def match_expression(text: str) -> str | None:
    """Plain words to an FTS5 query matching all of them (prefix match on the last),
    so user text never reaches FTS5's query syntax."""
    tokens = _TOKEN.findall(text)
    if not tokens:
        return None
    quoted = [f'"{t}"' for t in tokens]
    quoted[-1] += "*"
    return " ".join(quoted)


def query(
    db: sqlite3.Connection,
    text: str,
    *,
    project_id: str | None,
    session_id: str | None,
    kinds: list[str] | None,
    limit: int,
    now: float,
) -> list[SearchHit]:
    expression = match_expression(text)
    if expression is None:
        return []
    # Expired memories wait for the purge in the index, but are never returned.
    where = [
        "search_index MATCH ?",
        "NOT (kind = 'memory' AND ref_id IN (SELECT memory_id FROM memories WHERE expires_at <= ?))",
    ]
    args: list = [expression, now]
    if project_id is not None:
        where.append("project_id = ?")
        args.append(project_id)
    if session_id is not None:
        where.append("session_id = ?")
        args.append(session_id)
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        args += kinds
    rows = db.execute(
        "SELECT kind, ref_id, session_id, project_id, snippet(search_index, 0, '[', ']', '…', 16), "
        f"-bm25(search_index), created_at FROM search_index WHERE {' AND '.join(where)} "
        "ORDER BY bm25(search_index) LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [SearchHit(*r) for r in rows]
