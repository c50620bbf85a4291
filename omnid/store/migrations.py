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


def _build_context_rollup(db: sqlite3.Connection) -> None:
    """Roll up the events already stored (decisions stay rows only: they are content)."""
    from .context import ROLLED_UP, rollup_rows

    sessions = [r[0] for r in db.execute("SELECT DISTINCT session_id FROM context_events")]
    for session_id in sessions:
        for kind in ROLLED_UP:
            rows = db.execute(
                "SELECT subject, importance, detail, created_at FROM context_events "
                "WHERE session_id = ? AND kind = ? ORDER BY event_id",
                (session_id, kind),
            )
            db.executemany(
                "INSERT INTO context_rollup (session_id, kind, subject, events, bytes, first_at, last_at, "
                "max_importance, last_detail) VALUES (?,?,?,?,?,?,?,?,?)",
                [(session_id, kind, *agg) for agg in rollup_rows(rows)],
            )


_TOTALS_UPSERT = (
    "INSERT INTO context_totals (session_id, kind, subjects, events, bytes) VALUES ({}) "
    "ON CONFLICT (session_id, kind) DO UPDATE SET subjects = subjects + 1, "
    "events = events + excluded.events, bytes = bytes + excluded.bytes"
)
_DECISION_BYTES = "length({0}.subject) + coalesce(length({0}.detail), 0)"

SCALE_READS: list[Step] = [
    # Where each search row is, by what it indexes: FTS5 finds rows by its unindexed
    # columns (kind, ref_id, session_id) only by reading every row, so unindexing a memory
    # or a session's rows deletes by rowid from here instead (~0.8 s -> ~1 ms at 1.1M rows).
    """
    CREATE TABLE search_refs (
        kind       TEXT,
        ref_id     TEXT,
        row        INTEGER NOT NULL,
        session_id TEXT,
        PRIMARY KEY (kind, ref_id, row)
    ) WITHOUT ROWID
    """,
    "INSERT INTO search_refs (kind, ref_id, row, session_id) SELECT kind, ref_id, rowid, session_id FROM search_index",
    "CREATE INDEX search_refs_by_session ON search_refs (session_id) WHERE session_id IS NOT NULL",
    # Each session's totals per kind of context (rolled-up subjects, events, bytes; for
    # decisions: decisions, decisions, bytes), kept by triggers on whatever writes the
    # rollup or a decision, so the context view counts without reading every subject and
    # decision of the session (migration 9's decision-size index is no longer read).
    """
    CREATE TABLE context_totals (
        session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
        kind       TEXT NOT NULL,
        subjects   INTEGER NOT NULL,
        events     INTEGER NOT NULL,
        bytes      INTEGER NOT NULL,
        PRIMARY KEY (session_id, kind)
    ) WITHOUT ROWID
    """,
    "INSERT INTO context_totals (session_id, kind, subjects, events, bytes) "
    "SELECT session_id, kind, count(*), sum(events), sum(bytes) FROM context_rollup GROUP BY session_id, kind",
    "INSERT INTO context_totals (session_id, kind, subjects, events, bytes) "
    f"SELECT session_id, 'decision', count(*), count(*), sum({_DECISION_BYTES.format('context_events')}) "
    "FROM context_events WHERE kind = 'decision' GROUP BY session_id",
    "DROP INDEX context_decision_bytes",
    # Deletes only update (a session's totals go with it, maybe before its rows do).
    "CREATE TRIGGER context_totals_subject_added AFTER INSERT ON context_rollup BEGIN "
    f"{_TOTALS_UPSERT.format('new.session_id, new.kind, 1, new.events, new.bytes')}; END",
    "CREATE TRIGGER context_totals_subject_grown AFTER UPDATE OF events, bytes ON context_rollup BEGIN "
    "UPDATE context_totals SET events = events + new.events - old.events, bytes = bytes + new.bytes - old.bytes "
    "WHERE session_id = new.session_id AND kind = new.kind; END",
    "CREATE TRIGGER context_totals_subject_gone AFTER DELETE ON context_rollup BEGIN "
    "UPDATE context_totals SET subjects = subjects - 1, events = events - old.events, bytes = bytes - old.bytes "
    "WHERE session_id = old.session_id AND kind = old.kind; END",
    "CREATE TRIGGER context_totals_decision_added AFTER INSERT ON context_events WHEN new.kind = 'decision' BEGIN "
    + _TOTALS_UPSERT.format("new.session_id, 'decision', 1, 1, " + _DECISION_BYTES.format("new"))
    + "; END",
    "CREATE TRIGGER context_totals_decision_gone AFTER DELETE ON context_events WHEN old.kind = 'decision' BEGIN "
    f"UPDATE context_totals SET subjects = subjects - 1, events = events - 1, bytes = bytes - "
    f"({_DECISION_BYTES.format('old')}) WHERE session_id = old.session_id AND kind = 'decision'; END",
    # The view's files by importance, read in order (a session's ~1,000 subjects were sorted).
    "CREATE INDEX context_rollup_by_importance ON context_rollup (session_id, max_importance DESC, last_at DESC) "
    "WHERE kind = 'file_access'",
]


def _encode_stored_vectors(db: sqlite3.Connection) -> None:
    """The compact copy of every vector already stored (pure Python: about a second per 3,000
    vectors of 384 dimensions, once)."""
    from .vectors import encode, from_blob, store_code

    rows = db.execute("SELECT ref_id, kind, project_id, expires_at, vector FROM memory_vectors").fetchall()
    for ref_id, kind, project_id, expires_at, blob in rows:
        store_code(db, ref_id, kind, project_id, expires_at, encode(from_blob(blob)))


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
    # 5: sessions a tool resumes by its own key after its process restarts, with the
    # owners they had; and what users edit: title, tags, pin, archive.
    [
        "ALTER TABLE sessions ADD COLUMN resume_key TEXT",
        "ALTER TABLE sessions ADD COLUMN title TEXT",
        # The tags as a sorted JSON array (NULL: none), read with the row; session_tags
        # below holds the same tags again, indexed for filtering.
        "ALTER TABLE sessions ADD COLUMN tags TEXT",
        "ALTER TABLE sessions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1))",
        "ALTER TABLE sessions ADD COLUMN archived_at REAL",
        # When the current owner took the session over; NULL: it has had only one owner.
        "ALTER TABLE sessions ADD COLUMN owner_since REAL",
        # Never two live sessions of a tool under one key, so never two live owners.
        """
        CREATE UNIQUE INDEX sessions_one_live_per_resume_key
            ON sessions (tool_id, resume_key)
            WHERE ended_at IS NULL AND resume_key IS NOT NULL
        """,
        "CREATE INDEX sessions_by_resume_key ON sessions (tool_id, resume_key, started_at) "
        "WHERE resume_key IS NOT NULL",
        """
        CREATE TABLE session_tags (
            tag        TEXT NOT NULL,
            session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            PRIMARY KEY (tag, session_id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX session_tags_by_session ON session_tags (session_id)",
        # The owners a session had before its current one (which is on its row).
        """
        CREATE TABLE session_owners (
            session_id  TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            seq         INTEGER NOT NULL,
            owner_pid   INTEGER,
            owner_start INTEGER,
            boot_id     TEXT,
            since       REAL NOT NULL,
            until       REAL NOT NULL,
            released    TEXT NOT NULL CHECK (released IN ('ended', 'reaped', 'expired', 'died')),
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID
        """,
    ],
    # 6: a per-subject rollup of each session's context events, kept by the code that adds
    # events, so the files/changes view and the context pack read a bounded number of rows
    # however many events a session holds; the folded_* columns hold what compaction took out
    # of context_events (exports write them as context_fold records). Also: indexes for the
    # pack's "most accessed", "most recent" and live memories.
    [
        """
        CREATE TABLE context_rollup (
            session_id            TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            kind                  TEXT NOT NULL,
            subject               TEXT NOT NULL,
            events                INTEGER NOT NULL,
            bytes                 INTEGER NOT NULL,
            first_at              REAL NOT NULL,
            last_at               REAL NOT NULL,
            max_importance        REAL NOT NULL,
            last_detail           TEXT,
            folded                INTEGER NOT NULL DEFAULT 0,
            folded_bytes          INTEGER NOT NULL DEFAULT 0,
            folded_first_at       REAL,
            folded_last_at        REAL,
            folded_max_importance REAL,
            folded_last_detail    TEXT,
            PRIMARY KEY (session_id, kind, subject)
        ) WITHOUT ROWID
        """,
        # Covering what the pack ranks files by (subject is in every index of the table).
        "CREATE INDEX context_rollup_recent ON context_rollup (session_id, kind, last_at DESC, max_importance, events)",
        "ALTER TABLE sessions ADD COLUMN context_folded INTEGER NOT NULL DEFAULT 0",
        _build_context_rollup,
        "CREATE INDEX memories_most_accessed ON memories (project_id, accessed_count DESC, memory_id)",
        "CREATE INDEX memories_most_recent "
        "ON memories (project_id, coalesce(last_accessed, updated_at) DESC, memory_id)",
        # Counting a project's live memories reads this index alone.
        "CREATE INDEX memories_live ON memories (project_id, key, expires_at)",
    ],
    # 7: sessions that asked for their workspace's file changes to be recorded; the daemon
    # finds the live ones at start through the partial index.
    [
        "ALTER TABLE sessions ADD COLUMN track_workspace INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX sessions_tracked ON sessions (session_id) WHERE track_workspace = 1 AND ended_at IS NULL",
    ],
    # 8: embedding vectors of project and session memories (normalised float32, so a dot
    # product is the cosine), and each project's vector dimension, fixed on first use. A
    # memory's vector goes with it (the triggers), and is replaced or dropped by every
    # put; expires_at is the memory's, kept in step by put. Also: session.list by project.
    [
        """
        CREATE TABLE project_vector_dims (
            project_id TEXT PRIMARY KEY REFERENCES projects (project_id),
            dim        INTEGER NOT NULL CHECK (dim > 0)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE memory_vectors (
            ref_id     TEXT PRIMARY KEY,
            kind       TEXT NOT NULL CHECK (kind IN ('memory', 'session_memory')),
            project_id TEXT NOT NULL REFERENCES projects (project_id),
            session_id TEXT,
            expires_at REAL,
            vector     BLOB NOT NULL
        )
        """,
        "CREATE INDEX memory_vectors_by_project ON memory_vectors (project_id, kind, expires_at)",
        "CREATE TRIGGER memory_vectors_memory_gone AFTER DELETE ON memories "
        "BEGIN DELETE FROM memory_vectors WHERE ref_id = old.memory_id; END",
        "CREATE TRIGGER memory_vectors_session_memory_gone AFTER DELETE ON session_memories "
        "BEGIN DELETE FROM memory_vectors WHERE ref_id = old.memory_id; END",
        "DROP INDEX sessions_project",
        "CREATE INDEX sessions_project ON sessions (project_id, started_at DESC, session_id DESC)",
    ],
    # 9: search rows committed but not yet in the full-text index (the daemon moves them in
    # batches: an FTS5 segment per batch instead of one per commit; see store.search), and
    # each decision's size by session, so the context view counts a session's decisions
    # and their bytes from this index alone instead of reading every decision row.
    [
        "CREATE TABLE search_pending (id INTEGER PRIMARY KEY, body, kind, ref_id, session_id, project_id, created_at)",
        "CREATE INDEX context_decision_bytes ON context_events "
        "(session_id, length(subject) + coalesce(length(detail), 0)) WHERE kind = 'decision'",
    ],
    # 10 (reads at scale): reads that grew with the database now read a bounded number of rows.
    SCALE_READS,
    # 11 (vec: compact vector codes): beside each float32 vector, an int8 copy with its scale,
    # squared length and residual bound, clustered by project, which the sqlite-vec engine
    # scans (a quarter of the bytes) to find the few vectors it must rescore exactly. The
    # float32 vectors stay as they were: this only adds a copy, derived from them.
    [
        """
        CREATE TABLE memory_vector_codes (
            project_id TEXT NOT NULL,
            kind       TEXT NOT NULL,
            ref_id     TEXT NOT NULL,
            expires_at REAL,
            scale      REAL NOT NULL,
            norm2      INTEGER NOT NULL,
            err        REAL NOT NULL,
            code       BLOB NOT NULL,
            PRIMARY KEY (project_id, kind, ref_id)
        ) WITHOUT ROWID
        """,
        "CREATE TRIGGER memory_vector_codes_gone AFTER DELETE ON memory_vectors BEGIN DELETE FROM "
        "memory_vector_codes WHERE project_id = old.project_id AND kind = old.kind AND ref_id = old.ref_id; END",
        _encode_stored_vectors,
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
