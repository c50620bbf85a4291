"""Numbered schema migrations; ``PRAGMA user_version`` records the last one applied.

Never edit a migration that has shipped: append a new one. Each runs in one transaction
together with its ``user_version`` bump.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Union

Step = Union[str, Callable[[sqlite3.Connection], None]]


def _attach_sessions_to_projects(db: sqlite3.Connection) -> None:
    from ..projects import locate

    rows = db.execute("SELECT session_id, workspace, started_at FROM sessions WHERE workspace IS NOT NULL").fetchall()
    for session_id, workspace, started_at in rows:
        p = locate(workspace)
        db.execute(
            "INSERT INTO projects (project_id, root, name, vcs, created_at, last_activity) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (project_id) DO UPDATE SET last_activity = max(last_activity, excluded.last_activity)",
            (p.project_id, p.root, p.name, p.vcs, started_at, started_at),
        )
        db.execute("UPDATE sessions SET project_id = ? WHERE session_id = ?", (p.project_id, session_id))


MIGRATIONS: list[list[Step]] = [
    # 1: sessions, with at most one live deduplicated session per (tool, owner process).
    [
        """
        CREATE TABLE sessions (
            session_id    TEXT PRIMARY KEY,
            tool_id       TEXT NOT NULL,
            tool_version  TEXT,
            session_type  TEXT NOT NULL,
            owner_pid     INTEGER,
            owner_start   INTEGER,
            boot_id       TEXT,
            dedup         INTEGER NOT NULL DEFAULT 1 CHECK (dedup IN (0, 1)),
            workspace     TEXT,
            metadata      TEXT NOT NULL DEFAULT '{}',
            started_at    REAL NOT NULL,
            last_activity REAL NOT NULL,
            ended_at      REAL,
            end_reason    TEXT CHECK (end_reason IN ('ended', 'reaped', 'expired')),
            CHECK ((ended_at IS NULL) = (end_reason IS NULL))
        )
        """,
        """
        CREATE UNIQUE INDEX sessions_one_live_per_owner
            ON sessions (tool_id, owner_pid, owner_start, boot_id)
            WHERE ended_at IS NULL AND dedup = 1
        """,
        "CREATE INDEX sessions_live ON sessions (owner_pid) WHERE ended_at IS NULL",
        "CREATE INDEX sessions_newest ON sessions (started_at DESC, session_id DESC)",
        "CREATE INDEX sessions_tool_newest ON sessions (tool_id, started_at DESC)",
    ],
    # 2: what sessions hold: projects, context events, memories, messages, tasks, search.
    [
        """
        CREATE TABLE projects (
            project_id    TEXT PRIMARY KEY,
            root          TEXT NOT NULL UNIQUE,
            name          TEXT NOT NULL,
            vcs           TEXT,
            created_at    REAL NOT NULL,
            last_activity REAL NOT NULL
        )
        """,
        "ALTER TABLE sessions ADD COLUMN project_id TEXT REFERENCES projects (project_id)",
        "ALTER TABLE sessions ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE sessions ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0",
        # Cost in billionths of a dollar, so that sums stay exact.
        "ALTER TABLE sessions ADD COLUMN total_cost_nanos INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX sessions_project ON sessions (project_id, started_at DESC)",
        _attach_sessions_to_projects,
        """
        CREATE TABLE context_events (
            event_id   INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            kind       TEXT NOT NULL
                       CHECK (kind IN ('file_access', 'search', 'decision', 'memory_ref', 'file_change')),
            subject    TEXT NOT NULL,
            importance REAL CHECK (importance BETWEEN 0 AND 1),
            detail     TEXT,
            created_at REAL NOT NULL
        )
        """,
        "CREATE INDEX context_by_session ON context_events (session_id, kind, event_id)",
        """
        CREATE TABLE memories (
            memory_id      TEXT PRIMARY KEY,
            project_id     TEXT NOT NULL REFERENCES projects (project_id),
            key            TEXT NOT NULL,
            value          TEXT NOT NULL,
            metadata       TEXT NOT NULL DEFAULT '{}',
            version        INTEGER NOT NULL,
            created_at     REAL NOT NULL,
            updated_at     REAL NOT NULL,
            expires_at     REAL,
            accessed_count INTEGER NOT NULL DEFAULT 0,
            last_accessed  REAL,
            UNIQUE (project_id, key)
        )
        """,
        "CREATE INDEX memories_expiry ON memories (expires_at) WHERE expires_at IS NOT NULL",
        """
        CREATE TABLE memory_versions (
            memory_id  TEXT NOT NULL REFERENCES memories (memory_id) ON DELETE CASCADE,
            version    INTEGER NOT NULL,
            value      TEXT NOT NULL,
            metadata   TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            PRIMARY KEY (memory_id, version)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE session_memories (
            memory_id   TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            memory_type TEXT NOT NULL,
            content     TEXT NOT NULL,
            metadata    TEXT NOT NULL DEFAULT '{}',
            created_at  REAL NOT NULL
        )
        """,
        "CREATE INDEX session_memories_by_session ON session_memories (session_id, created_at)",
        """
        CREATE TABLE messages (
            message_id   INTEGER PRIMARY KEY,
            session_id   TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            seq          INTEGER NOT NULL,
            role         TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
            content      TEXT NOT NULL,
            message_type TEXT NOT NULL,
            metadata     TEXT NOT NULL DEFAULT '{}',
            tokens_used  INTEGER NOT NULL DEFAULT 0,
            cost_nanos   INTEGER NOT NULL DEFAULT 0,
            created_at   REAL NOT NULL,
            UNIQUE (session_id, seq)
        )
        """,
        """
        CREATE TABLE tasks (
            task_id     TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            title       TEXT NOT NULL,
            status      TEXT NOT NULL CHECK (status IN ('open', 'done', 'failed', 'cancelled')),
            external_id TEXT,
            metadata    TEXT NOT NULL DEFAULT '{}',
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            ended_at    REAL
        )
        """,
        "CREATE UNIQUE INDEX tasks_one_live_per_external_id ON tasks (external_id) "
        "WHERE status = 'open' AND external_id IS NOT NULL",
        "CREATE INDEX tasks_by_session ON tasks (session_id, created_at)",
        "CREATE INDEX tasks_newest ON tasks (created_at DESC, task_id DESC)",
        """
        CREATE TABLE interactions (
            interaction_id INTEGER PRIMARY KEY,
            task_id        TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
            kind           TEXT NOT NULL,
            content        TEXT NOT NULL,
            metadata       TEXT NOT NULL DEFAULT '{}',
            created_at     REAL NOT NULL
        )
        """,
        "CREATE INDEX interactions_by_task ON interactions (task_id, interaction_id)",
        # Ranked full-text search over messages, memories and decisions; rows are kept in
        # step with their sources by the code that writes those.
        """
        CREATE VIRTUAL TABLE search_index USING fts5 (
            body, kind UNINDEXED, ref_id UNINDEXED, session_id UNINDEXED,
            project_id UNINDEXED, created_at UNINDEXED,
            tokenize = 'unicode61 remove_diacritics 2'
        )
        """,
    ],
    # 3: each session's number of context events, kept by the code that adds events (as
    # message_count is), so an append no longer counts the session's rows.
    [
        "ALTER TABLE sessions ADD COLUMN context_event_count INTEGER NOT NULL DEFAULT 0",
        "UPDATE sessions SET context_event_count = "
        "(SELECT count(*) FROM context_events c WHERE c.session_id = sessions.session_id) "
        "WHERE session_id IN (SELECT session_id FROM context_events)",
    ],
    # 4: the owner process's pidfd inode where the kernel makes it unique (Linux 6.9+):
    # it tells apart two processes given the same pid within one start-time tick. NULL
    # for sessions recorded before, or where the kernel has no such identity.
    [
        "ALTER TABLE sessions ADD COLUMN owner_ino INTEGER",
    ],
]

LATEST = len(MIGRATIONS)


def apply(db: sqlite3.Connection, steps: list[Step]) -> None:
    """Run one migration's steps on ``db`` (inside the caller's transaction)."""
    for step in steps:
        if callable(step):
            step(db)
        else:
            db.execute(step)
