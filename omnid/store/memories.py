"""Project memories (versioned, with optional expiry) and session memories."""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

from omnid_client.protocol import Memory, MemoryVersion, SessionMemory

from . import search as search_store, vectors as vector_store
from .codec import dumps, loads, loads_dict
from .events import stage

_COLUMNS = (
    "memory_id, project_id, key, value, metadata, version, created_at, updated_at, expires_at, "
    "accessed_count, last_accessed"
)
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def _memory(row: tuple) -> Memory:
    return Memory(row[0], row[1], row[2], loads(row[3]), loads_dict(row[4]), *row[5:])


def _body(key: str, value: Any) -> str:
    return f"{key}\n{value if isinstance(value, str) else dumps(value)}"


def put(
    db: sqlite3.Connection,
    project_id: str,
    key: str,
    value: Any,
    metadata: dict[str, Any],
    expires_at: float | None,
    now: float,
) -> Memory:
    """Store ``value`` under ``key``; a live earlier value becomes the previous version."""
    row = db.execute(
        "SELECT memory_id, version, expires_at FROM memories WHERE project_id = ? AND key = ?", (project_id, key)
    ).fetchone()
    value_text, metadata_text = dumps(value), dumps(metadata)
    if row is not None and (row[2] is None or row[2] > now):
        memory_id, version = row[0], row[1] + 1
        db.execute(
            "UPDATE memories SET value = ?, metadata = ?, version = ?, updated_at = ?, expires_at = ? "
            "WHERE memory_id = ?",
            (value_text, metadata_text, version, now, expires_at, memory_id),
        )
        search_store.unindex(db, "memory", [memory_id])
        vector_store.detach(db, memory_id)  # it described the value replaced
    else:
        if row is not None:  # expired but not purged yet: it is gone for every reader
            delete_ids(db, [row[0]])
        memory_id, version = f"mem_{secrets.token_hex(6)}", 1
        db.execute(
            f"INSERT INTO memories ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,0,NULL)",
            (memory_id, project_id, key, value_text, metadata_text, version, now, now, expires_at),
        )
    db.execute(
        "INSERT INTO memory_versions (memory_id, version, value, metadata, created_at, expires_at) "
        "VALUES (?,?,?,?,?,?)",
        (memory_id, version, value_text, metadata_text, now, expires_at),
    )
    search_store.index(
        db, "memory", memory_id, _body(key, value), session_id=None, project_id=project_id, created_at=now
    )
    memory = get(db, project_id, key, now)
    assert memory is not None
    stage(db, "memory.put", project_id=project_id, scope="project", key=key, memory_id=memory_id, version=version)
    return memory


def get(db: sqlite3.Connection, project_id: str, key: str, now: float) -> Memory | None:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM memories WHERE project_id = ? AND key = ? AND {_LIVE}", (project_id, key, now)
    ).fetchone()
    return _memory(row) if row else None


def live_by_ids(db: sqlite3.Connection, memory_ids: list[str], now: float) -> dict[str, Memory]:
    marks = ",".join("?" * len(memory_ids))
    rows = db.execute(f"SELECT {_COLUMNS} FROM memories WHERE memory_id IN ({marks}) AND {_LIVE}", (*memory_ids, now))
    return {row[0]: _memory(row) for row in rows}


def record_access(db: sqlite3.Connection, memory: Memory, now: float) -> Memory:
    db.execute(
        "UPDATE memories SET accessed_count = accessed_count + 1, last_accessed = ? WHERE memory_id = ?",
        (now, memory.memory_id),
    )
    memory.accessed_count += 1
    memory.last_accessed = now
    return memory


def recent(db: sqlite3.Connection, project_id: str, limit: int, now: float) -> list[Memory]:
    """Live memories, most recently read first (never-read ones by last update)."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM memories WHERE project_id = ? AND {_LIVE} "
        "ORDER BY coalesce(last_accessed, updated_at) DESC, memory_id LIMIT ?",
        (project_id, now, limit),
    ).fetchall()
    return [_memory(r) for r in rows]


def history(db: sqlite3.Connection, memory_id: str) -> list[MemoryVersion]:
    rows = db.execute(
        "SELECT version, value, metadata, created_at, expires_at FROM memory_versions WHERE memory_id = ? "
        "ORDER BY version",
        (memory_id,),
    ).fetchall()
    return [MemoryVersion(v, loads(value), loads_dict(meta), at, exp) for v, value, meta, at, exp in rows]


def delete_ids(db: sqlite3.Connection, memory_ids: list[str]) -> int:
    search_store.unindex(db, "memory", memory_ids)
    deleted = 0
    for memory_id in memory_ids:
        deleted += db.execute("DELETE FROM memories WHERE memory_id = ?", (memory_id,)).rowcount
    return deleted


def expired_ids(db: sqlite3.Connection, now: float) -> list[str]:
    rows = db.execute("SELECT memory_id FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
    return [r[0] for r in rows]


def next_expiry(db: sqlite3.Connection) -> float | None:
    return db.execute("SELECT min(expires_at) FROM memories WHERE expires_at IS NOT NULL").fetchone()[0]


def count_live(db: sqlite3.Connection, now: float) -> int:
    return db.execute(f"SELECT count(*) FROM memories WHERE {_LIVE}", (now,)).fetchone()[0]


# --- session memories ---------------------------------------------------------------


def add_session_memory(
    db: sqlite3.Connection,
    session_id: str,
    project_id: str | None,
    memory_type: str,
    content: str,
    metadata: dict[str, Any],
    now: float,
) -> SessionMemory:
    memory = SessionMemory(f"smem_{secrets.token_hex(6)}", session_id, memory_type, content, metadata, now)
    db.execute(
        "INSERT INTO session_memories (memory_id, session_id, memory_type, content, metadata, created_at) "
        "VALUES (?,?,?,?,?,?)",
        (memory.memory_id, session_id, memory_type, content, dumps(metadata), now),
    )
    search_store.index(
        db, "session_memory", memory.memory_id, content, session_id=session_id, project_id=project_id, created_at=now
    )
    stage(
        db, "memory.put", session_id=session_id, project_id=project_id, scope="session",
        memory_id=memory.memory_id, memory_type=memory_type,
    )
    return memory


def session_memories(db: sqlite3.Connection, session_id: str) -> list[SessionMemory]:
    rows = db.execute(
        "SELECT memory_id, session_id, memory_type, content, metadata, created_at FROM session_memories "
        "WHERE session_id = ? ORDER BY created_at",
        (session_id,),
    ).fetchall()
    return [SessionMemory(*(*r[:4], loads_dict(r[4]), r[5])) for r in rows]


def session_memories_by_ids(db: sqlite3.Connection, memory_ids: list[str]) -> dict[str, SessionMemory]:
    marks = ",".join("?" * len(memory_ids))
    rows = db.execute(
        "SELECT memory_id, session_id, memory_type, content, metadata, created_at FROM session_memories "
        f"WHERE memory_id IN ({marks})",
        memory_ids,
    )
    return {r[0]: SessionMemory(*(*r[:4], loads_dict(r[4]), r[5])) for r in rows}


def has_session_memory(db: sqlite3.Connection, session_id: str) -> bool:
    row = db.execute("SELECT 1 FROM session_memories WHERE session_id = ? LIMIT 1", (session_id,)).fetchone()
    return row is not None
