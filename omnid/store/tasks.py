"""Tasks (always inside a session) and their interactions."""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

from omnid_client.protocol import Interaction, Task

from .codec import decode_cursor, dumps, encode_cursor, loads_dict

_COLUMNS = "task_id, session_id, title, status, external_id, metadata, created_at, updated_at, ended_at"
_WITH_COUNT = f"{_COLUMNS}, (SELECT count(*) FROM interactions i WHERE i.task_id = tasks.task_id)"


def _task(row: tuple) -> Task:
    return Task(*(*row[:5], loads_dict(row[5]), *row[6:10]))


def create(
    db: sqlite3.Connection, session_id: str, title: str, external_id: str | None, metadata: dict[str, Any], now: float
) -> Task:
    task = Task(f"task_{secrets.token_hex(8)}", session_id, title, "open", external_id, metadata, now, now, None)
    db.execute(
        f"INSERT INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
        (task.task_id, session_id, title, "open", external_id, dumps(metadata), now, now, None),
    )
    return task


def get(db: sqlite3.Connection, task_id: str) -> Task | None:
    row = db.execute(f"SELECT {_WITH_COUNT} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return _task(row) if row else None


def update(
    db: sqlite3.Connection,
    task: Task,
    *,
    status: str | None,
    title: str | None,
    metadata: dict[str, Any] | None,
    now: float,
) -> None:
    if status is not None and status != task.status:
        task.ended_at = None if status == "open" else now
        task.status = status  # type: ignore[assignment]
    task.title = title if title is not None else task.title
    task.metadata = metadata if metadata is not None else task.metadata
    task.updated_at = now
    db.execute(
        "UPDATE tasks SET status = ?, title = ?, metadata = ?, updated_at = ?, ended_at = ? WHERE task_id = ?",
        (task.status, task.title, dumps(task.metadata), now, task.ended_at, task.task_id),
    )


def page(
    db: sqlite3.Connection,
    *,
    session_id: str | None,
    status: str | None,
    external_id: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Task], str | None]:
    """Tasks, newest first."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("session_id", session_id), ("status", status), ("external_id", external_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if cursor is not None:
        where.append("(created_at, task_id) < (?, ?)")
        args += decode_cursor(cursor)
    sql = f"SELECT {_WITH_COUNT} FROM tasks"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = db.execute(sql + " ORDER BY created_at DESC, task_id DESC LIMIT ?", (*args, limit + 1)).fetchall()
    tasks = [_task(r) for r in rows[:limit]]
    last = tasks[-1] if len(rows) > limit else None
    return tasks, (encode_cursor(last.created_at, last.task_id) if last else None)


def count_for_session(db: sqlite3.Connection, session_id: str) -> int:
    return db.execute("SELECT count(*) FROM tasks WHERE session_id = ?", (session_id,)).fetchone()[0]


def add_interaction(
    db: sqlite3.Connection, task_id: str, kind: str, content: str, metadata: dict[str, Any], now: float
) -> Interaction:
    cur = db.execute(
        "INSERT INTO interactions (task_id, kind, content, metadata, created_at) VALUES (?,?,?,?,?)",
        (task_id, kind, content, dumps(metadata), now),
    )
    db.execute("UPDATE tasks SET updated_at = ? WHERE task_id = ?", (now, task_id))
    assert cur.lastrowid is not None  # set by every INSERT
    return Interaction(cur.lastrowid, task_id, kind, content, metadata, now)


def interactions(db: sqlite3.Connection, task_id: str, limit: int) -> list[Interaction]:
    rows = db.execute(
        "SELECT interaction_id, task_id, kind, content, metadata, created_at FROM interactions "
        "WHERE task_id = ? ORDER BY interaction_id LIMIT ?",
        (task_id, limit),
    ).fetchall()
    return [Interaction(*(*r[:4], loads_dict(r[4]), r[5])) for r in rows]


def orphan_sessions(db: sqlite3.Connection, started_before: float) -> list[str]:
    """Ended sessions that started before the cutoff and hold nothing: no tasks, messages,
    context or session memories."""
    rows = db.execute(
        "SELECT session_id FROM sessions s WHERE ended_at IS NOT NULL AND started_at < ? "
        "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.session_id = s.session_id) "
        "AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.session_id) "
        "AND NOT EXISTS (SELECT 1 FROM context_events c WHERE c.session_id = s.session_id) "
        "AND NOT EXISTS (SELECT 1 FROM session_memories sm WHERE sm.session_id = s.session_id) "
        "ORDER BY started_at",
        (started_before,),
    ).fetchall()
    return [r[0] for r in rows]


def delete_sessions(db: sqlite3.Connection, session_ids: list[str]) -> None:
    for sid in session_ids:
        db.execute("DELETE FROM sessions WHERE session_id = ?", (sid,))
