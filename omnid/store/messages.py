"""Messages of a session, with the session's counters kept in the same transaction."""

from __future__ import annotations

import sqlite3

from omnid_client.protocol import Message, NewMessage

from . import search as search_store
from .codec import dumps, from_nanos, loads_dict, to_nanos
from .sessions import Totals

_COLUMNS = "message_id, session_id, seq, role, content, message_type, metadata, tokens_used, cost_nanos, created_at"


def add(
    db: sqlite3.Connection, session_id: str, session: Totals, messages: list[NewMessage], now: float
) -> tuple[list[int], int, int, int]:
    """Append in order to the session whose row read ``session``; returns (message ids,
    message_count, total_tokens, total_cost_nanos)."""
    project_id, count = session.project_id, session.message_count
    tokens, nanos = session.total_tokens, session.total_cost_nanos
    ids: list[int] = []
    for m in messages:
        count += 1
        cost = to_nanos(m.cost_usd)
        tokens += m.tokens_used
        nanos += cost
        cur = db.execute(
            f"INSERT INTO messages ({_COLUMNS}) VALUES (NULL,?,?,?,?,?,?,?,?,?)",
            (session_id, count, m.role, m.content, m.message_type, dumps(m.metadata), m.tokens_used, cost, now),
        )
        assert cur.lastrowid is not None  # set by every INSERT
        ids.append(cur.lastrowid)
        search_store.index(
            db, "message", cur.lastrowid, m.content, session_id=session_id, project_id=project_id, created_at=now
        )
    db.execute(
        "UPDATE sessions SET message_count = ?, total_tokens = ?, total_cost_nanos = ?, last_activity = ? "
        "WHERE session_id = ?",
        (count, tokens, nanos, now, session_id),
    )
    return ids, count, tokens, nanos


def page(db: sqlite3.Connection, session_id: str, after_seq: int, limit: int) -> tuple[list[Message], int | None]:
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (session_id, after_seq, limit + 1),
    ).fetchall()
    messages = [Message(*(*r[:6], loads_dict(r[6]), r[7], from_nanos(r[8]), r[9])) for r in rows[:limit]]
    return messages, (messages[-1].seq if len(rows) > limit else None)


def by_role(db: sqlite3.Connection, session_id: str) -> dict[str, int]:
    return dict(db.execute("SELECT role, count(*) FROM messages WHERE session_id = ? GROUP BY role", (session_id,)))


def time_range(db: sqlite3.Connection, session_id: str) -> tuple[float | None, float | None]:
    return db.execute(
        "SELECT min(created_at), max(created_at) FROM messages WHERE session_id = ?", (session_id,)
    ).fetchone()
