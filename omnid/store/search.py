"""The full-text index (FTS5) over messages, memories, session memories and decisions.

On the store's connection, rows to index wait in ``pending_search_rows`` and are written
together just before the transaction commits: FTS5 writes a new index segment (and later
merges it) whenever a savepoint ends, and each request runs in its own savepoint, so rows
written as they came cost a segment per request instead of one per commit. Unindexing
drops waiting rows too, and a search writes them first, so no reader can tell.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, Callable, Sequence

from omnid_client.protocol import SearchHit

_TOKEN = re.compile(r"\w+", re.UNICODE)
_INSERT = "INSERT INTO search_index (body, kind, ref_id, session_id, project_id, created_at) VALUES (?,?,?,?,?,?)"

Row = tuple[object, ...]


class StoreConnection(sqlite3.Connection):
    """The store's connection, holding the search rows its open transaction will index
    when it commits. Any other connection indexes each row as it is written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_search_rows: list[Row] = []


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
    row = (body, kind, str(ref_id), session_id, project_id, created_at)
    if isinstance(db, StoreConnection) and db.in_transaction:
        db.pending_search_rows.append(row)
    else:
        db.execute(_INSERT, row)


def write_pending(db: sqlite3.Connection) -> None:
    """Index the rows waiting on ``db`` now; if that fails they are still waiting."""
    if isinstance(db, StoreConnection) and db.pending_search_rows:
        db.executemany(_INSERT, db.pending_search_rows)
        db.pending_search_rows = []  # a new list: see Store.write


def unindex(db: sqlite3.Connection, kind: str, ref_ids: list[str]) -> None:
    for ref_id in ref_ids:
        db.execute("DELETE FROM search_index WHERE kind = ? AND ref_id = ?", (kind, ref_id))
    ids = set(ref_ids)
    _drop_pending(db, lambda row: row[1] == kind and row[2] in ids)


def unindex_sessions(db: sqlite3.Connection, session_ids: list[str]) -> None:
    for sid in session_ids:
        db.execute("DELETE FROM search_index WHERE session_id = ?", (sid,))
    ids = set(session_ids)
    _drop_pending(db, lambda row: row[3] in ids)


def _drop_pending(db: sqlite3.Connection, matches: Callable[[Row], bool]) -> None:
    if not isinstance(db, StoreConnection):
        return
    pending = db.pending_search_rows
    if pending and any(matches(row) for row in pending):
        db.pending_search_rows = [row for row in pending if not matches(row)]


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
    kinds: Sequence[str] | None,
    limit: int,
    now: float,
) -> list[SearchHit]:
    expression = match_expression(text)
    if expression is None:
        return []
    # Rows added earlier in the open transaction are found too.
    if isinstance(db, StoreConnection) and db.pending_search_rows:
        db.execute("SAVEPOINT search_rows")
        try:
            write_pending(db)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK TO search_rows")
                db.execute("RELEASE search_rows")
            raise
        db.execute("RELEASE search_rows")
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
