"""Numbered schema migrations; ``PRAGMA user_version`` records the last one applied.

Never edit a migration that has shipped: append a new one. Each runs in one transaction
together with its ``user_version`` bump.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
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
]

LATEST = len(MIGRATIONS)
