"""Queries on projects."""

from __future__ import annotations

import sqlite3

from omnid_client.protocol import Project

from ..projects import ProjectRoot
from .codec import decode_cursor, encode_cursor

_SELECT = """
    SELECT p.project_id, p.root, p.name, p.vcs, p.created_at, p.last_activity,
           (SELECT count(*) FROM sessions s WHERE s.project_id = p.project_id),
           (SELECT count(*) FROM sessions s WHERE s.project_id = p.project_id AND s.ended_at IS NULL),
           (SELECT count(*) FROM memories m WHERE m.project_id = p.project_id
                AND (m.expires_at IS NULL OR m.expires_at > ?))
    FROM projects p
"""


def ensure(db: sqlite3.Connection, p: ProjectRoot, now: float) -> None:
    """Record the project (once) and note activity in it."""
    db.execute(
        "INSERT INTO projects (project_id, root, name, vcs, created_at, last_activity) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT (project_id) DO UPDATE SET last_activity = excluded.last_activity",
        (p.project_id, p.root, p.name, p.vcs, now, now),
    )


def get(db: sqlite3.Connection, project_id: str, now: float) -> Project | None:
    row = db.execute(_SELECT + " WHERE p.project_id = ?", (now, project_id)).fetchone()
    return Project(*row) if row else None


def exists(db: sqlite3.Connection, project_id: str) -> bool:
    return db.execute("SELECT 1 FROM projects WHERE project_id = ?", (project_id,)).fetchone() is not None


def page(db: sqlite3.Connection, *, limit: int, cursor: str | None, now: float) -> tuple[list[Project], str | None]:
    """Projects, most recently active first."""
    sql = _SELECT
    args: list[object] = [now]
    if cursor is not None:
        sql += " WHERE (p.last_activity, p.project_id) < (?, ?)"
        args += decode_cursor(cursor)
    sql += " ORDER BY p.last_activity DESC, p.project_id DESC LIMIT ?"
    rows = db.execute(sql, (*args, limit + 1)).fetchall()
    projects = [Project(*r) for r in rows[:limit]]
    last = projects[-1] if len(rows) > limit else None
    return projects, (encode_cursor(last.last_activity, last.project_id) if last else None)
