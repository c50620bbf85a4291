"""Queries on the sessions table."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Iterable, NamedTuple

from omnid_client.protocol import Session

from ..identity import ProcessIdentity
from .codec import decode_cursor, dumps, encode_cursor, from_nanos, loads_dict

if TYPE_CHECKING:
    from . import Store

COLUMNS = (
    "session_id, tool_id, tool_version, session_type, owner_pid, owner_start, boot_id, "
    "workspace, metadata, started_at, last_activity, ended_at, end_reason, project_id, "
    "message_count, total_tokens, total_cost_nanos"
)
_INSERTED = COLUMNS.rsplit(", message_count", 1)[0]


def _session(row: tuple) -> Session:
    return Session(*(*row[:8], loads_dict(row[8]), *row[9:16], from_nanos(row[16])))


def insert(db: sqlite3.Connection, s: Session, *, dedup: bool, owner_ino: int | None = None) -> None:
    db.execute(
        f"INSERT INTO sessions ({_INSERTED}, dedup, owner_ino) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            s.session_id, s.tool_id, s.tool_version, s.session_type, s.owner_pid, s.owner_start,
            s.boot_id, s.workspace, dumps(s.metadata), s.started_at, s.last_activity,
            s.ended_at, s.end_reason, s.project_id, int(dedup), owner_ino,
        ),
    )


def get(db: sqlite3.Connection, session_id: str) -> Session | None:
    row = db.execute(f"SELECT {COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return _session(row) if row else None


class Totals(NamedTuple):
    """What a method adding content to a session needs of its row: whether it ended, its
    project, and the counters it keeps."""

    end_reason: str | None
    project_id: str | None
    message_count: int
    total_tokens: int
    total_cost_nanos: int
    context_event_count: int


def totals(db: sqlite3.Connection, session_id: str) -> Totals | None:
    row = db.execute(
        "SELECT end_reason, project_id, message_count, total_tokens, total_cost_nanos, context_event_count "
        "FROM sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    return Totals(*row) if row else None


def find_live(db: sqlite3.Connection, tool_id: str, owner: ProcessIdentity) -> Session | None:
    """The live deduplicated session of this tool and process (a session recorded with
    another pidfd inode was another process's, which had the same pid and start tick)."""
    row = db.execute(
        f"SELECT {COLUMNS} FROM sessions WHERE tool_id = ? AND owner_pid = ? AND owner_start = ? "
        "AND boot_id = ? AND ended_at IS NULL AND dedup = 1 AND (owner_ino IS NULL OR ?5 IS NULL OR owner_ino = ?5)",
        (tool_id, owner.pid, owner.start, owner.boot_id, owner.ino),
    ).fetchone()
    return _session(row) if row else None


class LiveLookups:
    """``find_live`` answers kept until the next write: a get_or_create that reuses a
    session (what every tool does at start, and many on every request) then runs no SQL.

    Any write block, committed or not, empties it, and only rows read outside a
    transaction are kept, so an answer from here is never older than the committed
    database. (Every change to the database goes through ``Store.write``.)"""

    LIMIT = 4096

    def __init__(self, store: "Store"):
        self._store = store
        self._writes_seen = -1
        self._found: dict[tuple[str, int, int, str, int | None], Session] = {}

    def find_live(self, tool_id: str, owner: ProcessIdentity) -> Session | None:
        store = self._store
        if self._writes_seen != store.writes:
            self._found.clear()
            self._writes_seen = store.writes
        key = (tool_id, owner.pid, owner.start, owner.boot_id, owner.ino)
        session = self._found.get(key)
        if session is None:
            session = find_live(store.db, tool_id, owner)
            if session is not None and not store.in_transaction and len(self._found) < self.LIMIT:
                self._found[key] = session
        return session


def touch(db: sqlite3.Connection, session_id: str, now: float) -> bool:
    """Move last_activity of a live session; False if it is not live."""
    cur = db.execute(
        "UPDATE sessions SET last_activity = ? WHERE session_id = ? AND ended_at IS NULL", (now, session_id)
    )
    return cur.rowcount == 1


def end(db: sqlite3.Connection, session_ids: Iterable[str], reason: str, now: float) -> list[str]:
    """End the live ones among ``session_ids``; returns those it ended."""
    ended = []
    for sid in session_ids:
        cur = db.execute(
            "UPDATE sessions SET ended_at = ?, end_reason = ?, last_activity = max(last_activity, ?) "
            "WHERE session_id = ? AND ended_at IS NULL",
            (now, reason, now, sid),
        )
        if cur.rowcount:
            ended.append(sid)
    return ended


def live_owned(db: sqlite3.Connection) -> list[tuple[str, str, ProcessIdentity]]:
    """(session_id, tool_id, owner) of every live session with an owner process."""
    rows = db.execute(
        "SELECT session_id, tool_id, owner_pid, owner_start, boot_id, owner_ino FROM sessions "
        "WHERE ended_at IS NULL AND owner_pid IS NOT NULL"
    ).fetchall()
    return [(sid, tool, ProcessIdentity(pid, start, boot, ino)) for sid, tool, pid, start, boot, ino in rows]


def count_live(db: sqlite3.Connection) -> int:
    return db.execute("SELECT count(*) FROM sessions WHERE ended_at IS NULL").fetchone()[0]


def page(
    db: sqlite3.Connection,
    *,
    tool_id: str | None,
    session_type: str | None,
    status: str,
    workspace: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Session], str | None]:
    """Sessions newest first, ``limit`` at a time, resuming after ``cursor``."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("tool_id", tool_id), ("session_type", session_type), ("workspace", workspace)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if status == "live":
        where.append("ended_at IS NULL")
    elif status == "ended":
        where.append("ended_at IS NOT NULL")
    if cursor is not None:
        started_at, sid = decode_cursor(cursor)
        where.append("(started_at, session_id) < (?, ?)")
        args += [started_at, sid]
    sql = f"SELECT {COLUMNS} FROM sessions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY started_at DESC, session_id DESC LIMIT ?"
    rows = db.execute(sql, (*args, limit + 1)).fetchall()
    sessions = [_session(r) for r in rows[:limit]]
    more = len(rows) > limit
    return sessions, (encode_cursor(sessions[-1].started_at, sessions[-1].session_id) if more else None)
