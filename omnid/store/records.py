"""Rows as export records: sessions, projects and memories read out in a stable order, and
one record as one line of the export file."""

from __future__ import annotations

import sqlite3
from typing import Iterable, Iterator, Sequence, cast

import msgspec

from omnid_client.protocol import (
    ContextFoldRecord,
    ContextRecord,
    ExportHeader,
    InteractionRecord,
    MemoryRecord,
    MemoryVersionRecord,
    MessageRecord,
    PastOwner,
    ProjectRecord,
    Record,
    SessionMemoryRecord,
    SessionRecord,
    TaskRecord,
)

from . import context as context_store
from .codec import loads, loads_dict

_json = msgspec.json.Encoder()


def record_kind(record: Record) -> str:
    """The record's ``type`` (``"session"``, ``"omnid-export"``, ...)."""
    return cast(str, record.__struct_config__.tag)  # every record type is declared with a str tag


def jsonl(record: Record) -> bytes:
    """One export line: the record as JSON (its ``type`` first, then its fields in their
    declared order), so the same rows always give the same bytes."""
    return _json.encode(record) + b"\n"


# --- reading ---------------------------------------------------------------------------

SESSION_COLUMNS = (
    "session_id, tool_id, tool_version, session_type, owner_pid, owner_start, boot_id, dedup, workspace, "
    "metadata, started_at, last_activity, ended_at, end_reason, project_id, message_count, total_tokens, "
    "total_cost_nanos, resume_key, title, tags, pinned, archived_at, owner_since"
)
MEMORY_COLUMNS = (
    "memory_id, project_id, key, value, metadata, version, created_at, updated_at, expires_at, "
    "accessed_count, last_accessed"
)


def select_sessions(
    db: sqlite3.Connection,
    *,
    session_ids: Sequence[str] | None = None,
    project_ids: Sequence[str] | None = None,
    since: float | None = None,
) -> list[tuple[str, str | None]]:
    """(session_id, project_id) of the sessions matching every given filter, oldest first."""
    where: list[str] = []
    args: list[object] = []
    if session_ids is not None:
        where.append(f"session_id IN ({','.join('?' * len(session_ids))})")
        args += session_ids
    if project_ids is not None:
        where.append(f"project_id IN ({','.join('?' * len(project_ids))})")
        args += project_ids
    if since is not None:
        where.append("last_activity >= ?")
        args.append(since)
    sql = "SELECT session_id, project_id FROM sessions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return db.execute(sql + " ORDER BY started_at, session_id", args).fetchall()


def _memory_filter(project_ids: Sequence[str] | None, since: float | None, now: float) -> tuple[str, list[object]]:
    where = ["(expires_at IS NULL OR expires_at > ?)"]
    args: list[object] = [now]
    if project_ids is not None:
        where.append(f"project_id IN ({','.join('?' * len(project_ids))})")
        args += project_ids
    if since is not None:
        where.append("updated_at >= ?")
        args.append(since)
    return " AND ".join(where), args


def export_records(
    db: sqlite3.Connection,
    *,
    now: float,
    session_ids: Sequence[str] | None = None,
    project_ids: Sequence[str] | None = None,
    since: float | None = None,
) -> Iterator[Record]:
    """Everything (or what the filters select) as records, in the export's stable order:
    header, projects, memories with their versions, then sessions with their content.
    Naming sessions exports no project memories; every exported session's and memory's
    project is exported too."""
    yield ExportHeader()
    sessions = select_sessions(db, session_ids=session_ids, project_ids=project_ids, since=since)
    memory_where, memory_args = _memory_filter(project_ids, since, now)
    with_memories = session_ids is None
    if session_ids is None and project_ids is None and since is None:
        projects = [r[0] for r in db.execute("SELECT project_id FROM projects ORDER BY project_id")]
    else:
        wanted = {pid for _, pid in sessions if pid is not None}
        if with_memories:
            wanted.update(
                r[0] for r in db.execute(f"SELECT DISTINCT project_id FROM memories WHERE {memory_where}", memory_args)
            )
        if project_ids is not None:
            wanted.update(project_ids)
        projects = sorted(wanted)
    yield from project_records(db, projects)
    if with_memories:
        rows = db.execute(
            f"SELECT {MEMORY_COLUMNS}, {_VECTOR} FROM memories WHERE {memory_where} ORDER BY memory_id", memory_args
        )
        for row in rows:
            yield from _memory_records(db, row)
    for session_id, _ in sessions:
        yield from session_records(db, session_id)


def project_records(db: sqlite3.Connection, project_ids: Iterable[str]) -> Iterator[ProjectRecord]:
    for project_id in project_ids:
        row = db.execute(
            "SELECT project_id, root, name, vcs, created_at, last_activity FROM projects WHERE project_id = ?",
            (project_id,),
        ).fetchone()
        if row is not None:
            yield ProjectRecord(*row)


_VECTOR = "(SELECT vector FROM memory_vectors WHERE ref_id = memory_id)"
"""A memory's (or session memory's) stored vector, or NULL, as a column of its row."""


def _memory_records(db: sqlite3.Connection, row: tuple) -> Iterator[Record]:
    yield MemoryRecord(row[0], row[1], row[2], loads(row[3]), loads_dict(row[4]), *row[5:])
    versions = db.execute(
        "SELECT version, value, metadata, created_at, expires_at FROM memory_versions WHERE memory_id = ? "
        "ORDER BY version",
        (row[0],),
    )
    for version, value, metadata, created_at, expires_at in versions:
        yield MemoryVersionRecord(row[0], version, loads(value), loads_dict(metadata), created_at, expires_at)


def session_records(db: sqlite3.Connection, session_id: str) -> Iterator[Record]:
    """One session and everything it holds, each kind in the order it was added."""
    row = db.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        return
    past = db.execute(
        "SELECT owner_pid, owner_start, boot_id, since, until, released FROM session_owners WHERE session_id = ? "
        "ORDER BY seq",
        (session_id,),
    )
    yield SessionRecord(*(
        *row[:7], bool(row[7]), row[8], loads_dict(row[9]), *row[10:20], loads(row[20]) if row[20] else [],
        bool(row[21]), row[22], row[23], [PastOwner(*owner) for owner in past],
    ))
    folded = 0
    for fold in context_store.folds(db, session_id):
        folded += fold[2]
        yield ContextFoldRecord(session_id, *fold)
    events = db.execute(
        "SELECT kind, subject, importance, detail, created_at FROM context_events WHERE session_id = ? "
        "ORDER BY event_id",
        (session_id,),
    )
    for seq, (kind, subject, importance, detail, created_at) in enumerate(events, folded + 1):
        yield ContextRecord(session_id, seq, kind, subject, importance, detail, created_at)
    messages = db.execute(
        "SELECT seq, role, content, message_type, metadata, tokens_used, cost_nanos, created_at FROM messages "
        "WHERE session_id = ? ORDER BY seq",
        (session_id,),
    )
    for seq, role, content, message_type, metadata, tokens, nanos, created_at in messages:
        yield MessageRecord(
            session_id, seq, role, content, message_type, loads_dict(metadata), tokens, nanos, created_at
        )
    memories = db.execute(
        f"SELECT memory_id, memory_type, content, metadata, created_at, {_VECTOR} FROM session_memories "
        "WHERE session_id = ? ORDER BY created_at, memory_id",
        (session_id,),
    )
    for memory_id, memory_type, content, metadata, created_at, vector in memories:
        yield SessionMemoryRecord(
            memory_id, session_id, memory_type, content, loads_dict(metadata), created_at, vector
        )
    tasks = db.execute(
        "SELECT task_id, title, status, external_id, metadata, created_at, updated_at, ended_at FROM tasks "
        "WHERE session_id = ? ORDER BY created_at, task_id",
        (session_id,),
    ).fetchall()
    for task_id, title, status, external_id, metadata, created_at, updated_at, ended_at in tasks:
        yield TaskRecord(
            task_id, session_id, title, status, external_id, loads_dict(metadata), created_at, updated_at, ended_at
        )
        steps = db.execute(
            "SELECT kind, content, metadata, created_at FROM interactions WHERE task_id = ? ORDER BY interaction_id",
            (task_id,),
        )
        for seq, (kind, content, metadata, created_at) in enumerate(steps, 1):
            yield InteractionRecord(task_id, seq, kind, content, loads_dict(metadata), created_at)


def archive_head(db: sqlite3.Connection, session_ids: Sequence[str]) -> Iterator[Record]:
    """What an archive of these sessions starts with: the header and the sessions' projects
    (their ``session_records`` follow)."""
    yield ExportHeader()
    projects = sorted(
        {
            r[0]
            for sid in session_ids
            for r in db.execute(
                "SELECT project_id FROM sessions WHERE session_id = ? AND project_id IS NOT NULL", (sid,)
            )
        }
    )
    yield from project_records(db, projects)
