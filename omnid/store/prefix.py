"""Ids that start with a prefix, found by a range scan of the id's primary-key index."""

from __future__ import annotations

import sqlite3

ID_COLUMNS = {
    "session": ("sessions", "session_id"), "task": ("tasks", "task_id"), "project": ("projects", "project_id"),
}


def ids_with_prefix(db: sqlite3.Connection, kind: str, prefix: str, limit: int) -> tuple[list[str], bool]:
    """Up to ``limit`` ids of ``kind`` starting with ``prefix``, in order, and whether there are
    more. ``id >= prefix AND id < prefix + DEL`` is a range on the index (ids are ASCII, all
    below DEL), so the cost is that of the ids returned, whatever the table's size."""
    table, column = ID_COLUMNS[kind]
    rows = db.execute(
        f"SELECT {column} FROM {table} WHERE {column} >= ? AND {column} < ? ORDER BY {column} LIMIT ?",
        (prefix, prefix + "\x7f", limit + 1),
    ).fetchall()
    return [r[0] for r in rows[:limit]], len(rows) > limit
