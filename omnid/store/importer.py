"""Export records as rows: one import batch written in, keeping the records' ids and
skipping what already exists."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any, Protocol

from omnid_client.errors import Conflict, Invalid, RemoteError
from omnid_client.protocol import (
    MAX_VALUE_BYTES,
    ContextEvent,
    ContextFoldRecord,
    ContextRecord,
    ExportHeader,
    ImportCounts,
    InteractionRecord,
    MemoryRecord,
    MemoryVersionRecord,
    MessageRecord,
    ProjectRecord,
    Record,
    SessionMemoryRecord,
    SessionRecord,
    TaskRecord,
)

from ..projects import project_id_for
from . import context as context_store, search as search_store, vectors as vector_store
from .codec import dumps
from .memories import _body as memory_search_body, delete_ids as delete_memories
from .records import MEMORY_COLUMNS, SESSION_COLUMNS, record_kind
from .sessions import set_tags


class SizeCheck(Protocol):
    """The API's size check for a stored document: raises if ``value`` is too large."""

    def __call__(self, value: Any, limit: int = ..., field: str = ...) -> None: ...


class Importer:
    """Writes one batch of records. Ids are kept; a record already present is counted as
    ``existing`` and left alone, so importing the same file twice adds nothing. Content
    of a session (context, messages, interactions) is matched by its position ``seq``.

    With ``dry_run`` nothing is written; a record whose parent is not in the database is
    assumed to follow a parent that this import creates."""

    def __init__(self, db: sqlite3.Connection, *, now: float, dry_run: bool, check_size: SizeCheck):
        self.db = db
        self.now = now
        self.dry_run = dry_run
        self.check_size = check_size
        self.counts: dict[str, ImportCounts] = {}
        self.live_sessions: list[SessionRecord] = []
        self.expiries: list[float] = []
        self._new: dict[str, set[str]] = defaultdict(set)  # ids this batch creates, by kind
        self._positions: dict[tuple[str, str], int] = {}
        self._projects: dict[str, str | None] = {}
        self._counted: dict[str, int] = {}
        self._line: str = ""

    def add(self, record: Record, where: str) -> None:
        """Import ``record``; ``where`` ("line 12") prefixes any error."""
        self._line = where
        kind = record_kind(record)
        handler = getattr(self, f"_{kind.replace('-', '_')}")
        try:
            outcome = handler(record)
        except sqlite3.IntegrityError as e:
            raise Conflict(f"{where}: {kind} conflicts with what the database holds: {e}", {"line": where}) from None
        except RemoteError as e:
            if str(e).startswith(f"{where}:"):
                raise
            raise type(e)(f"{where}: {e}", {**e.details, "line": where}) from None
        if outcome is None:  # the header
            return
        counts = self.counts.setdefault(kind, ImportCounts(skipped={}))
        if outcome == "imported":
            counts.imported += 1
        elif outcome == "existing":
            counts.existing += 1
        else:
            counts.skipped[outcome] = counts.skipped.get(outcome, 0) + 1

    # -- helpers ---------------------------------------------------------------------

    def _invalid(self, message: str) -> Invalid:
        return Invalid(f"{self._line}: {message}", {"line": self._line})

    def _exists(self, sql: str, *args: Any) -> bool:
        return self.db.execute(sql, args).fetchone() is not None

    def _parent(self, kind: str, table: str, column: str, key: str) -> bool:
        """Whether the parent exists (or, in a dry run, will); an error if it never can."""
        if key in self._new[kind] or self._exists(f"SELECT 1 FROM {table} WHERE {column} = ?", key):
            return True
        if self.dry_run:
            return False
        raise self._invalid(f"no {kind} {key}: its {kind} record must come before it")

    def _position(self, kind: str, parent: str, seq: int, current: str) -> str:
        """``existing`` for a seq already present, ``imported`` for the next one; a gap is an error."""
        key = (kind, parent)
        have = self._positions.get(key)
        if have is None:
            have = self._positions[key] = self.db.execute(current, (parent,)).fetchone()[0]
        if seq <= have:
            return "existing"
        if seq != have + 1 and not self.dry_run:
            raise self._invalid(f"{kind} {seq} of {parent} does not follow {kind} {have}")
        self._positions[key] = seq
        return "imported"

    def _write(self, sql: str, *args: Any) -> int | None:
        if self.dry_run:
            return None
        return self.db.execute(sql, args).lastrowid

    # -- one method per record type ----------------------------------------------------

    def _omnid_export(self, r: ExportHeader) -> None:
        from omnid_client.protocol import EXPORT_FORMAT

        if r.format > EXPORT_FORMAT:
            raise self._invalid(
                f"export format {r.format} is newer than this omnid reads ({EXPORT_FORMAT}); upgrade omnid"
            )

    def _project(self, r: ProjectRecord) -> str:
        if project_id_for(r.root) != r.project_id:
            raise self._invalid(
                f"project id {r.project_id} is not the id of root {r.root!r} ({project_id_for(r.root)})"
            )
        if self._exists("SELECT 1 FROM projects WHERE project_id = ?", r.project_id):
            return "existing"
        self._write(
            "INSERT INTO projects (project_id, root, name, vcs, created_at, last_activity) VALUES (?,?,?,?,?,?)",
            r.project_id, r.root, r.name, r.vcs, r.created_at, r.last_activity,
        )
        self._new["project"].add(r.project_id)
        return "imported"

    def _memory(self, r: MemoryRecord) -> str:
        self.check_size(r.metadata)
        self.check_size(r.value, MAX_VALUE_BYTES, "value")
        if self._exists("SELECT 1 FROM memories WHERE memory_id = ?", r.memory_id):
            return "existing"
        if r.expires_at is not None and r.expires_at <= self.now:
            return "expired"
        if r.updated_at < r.created_at:
            raise self._invalid("updated_at is before created_at")
        taken = self.db.execute(
            "SELECT memory_id, expires_at FROM memories WHERE project_id = ? AND key = ?", (r.project_id, r.key)
        ).fetchone()
        if taken is not None:
            if taken[1] is None or taken[1] > self.now:
                return "key_taken"
            if not self.dry_run:  # expired, waiting for the purge: gone for every reader already
                delete_memories(self.db, [taken[0]])
        vector = None if r.embedding is None else vector_store.imported_vector(r.embedding)
        if not self._parent("project", "projects", "project_id", r.project_id):
            self._new["memory"].add(r.memory_id)
            return "imported"
        self._write(
            f"INSERT INTO memories ({MEMORY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            r.memory_id, r.project_id, r.key, dumps(r.value), dumps(r.metadata), r.version, r.created_at,
            r.updated_at, r.expires_at, r.accessed_count, r.last_accessed,
        )
        if vector is not None:
            self._attach(vector, r.memory_id, "memory", r.project_id, expires_at=r.expires_at)
        if not self.dry_run:
            search_store.index(
                self.db, "memory", r.memory_id, memory_search_body(r.key, r.value),
                session_id=None, project_id=r.project_id, created_at=r.updated_at,
            )
        if r.expires_at is not None:
            self.expiries.append(r.expires_at)
        self._new["memory"].add(r.memory_id)
        return "imported"

    def _memory_version(self, r: MemoryVersionRecord) -> str:
        self.check_size(r.metadata)
        self.check_size(r.value, MAX_VALUE_BYTES, "value")
        if self._exists("SELECT 1 FROM memory_versions WHERE memory_id = ? AND version = ?", r.memory_id, r.version):
            return "existing"
        if r.memory_id not in self._new["memory"] and not self._exists(
            "SELECT 1 FROM memories WHERE memory_id = ?", r.memory_id
        ):
            return "imported" if self.dry_run else "no_memory"
        self._write(
            "INSERT INTO memory_versions (memory_id, version, value, metadata, created_at, expires_at) "
            "VALUES (?,?,?,?,?,?)",
            r.memory_id, r.version, dumps(r.value), dumps(r.metadata), r.created_at, r.expires_at,
        )
        return "imported"

    def _session(self, r: SessionRecord) -> str:
        self.check_size(r.metadata)
        if (r.ended_at is None) != (r.end_reason is None):
            raise self._invalid("ended_at and end_reason must both be set (an ended session) or both be null")
        if r.last_activity < r.started_at:
            raise self._invalid("last_activity is before started_at")
        if self._exists("SELECT 1 FROM sessions WHERE session_id = ?", r.session_id):
            return "existing"
        if r.project_id is not None:
            self._parent("project", "projects", "project_id", r.project_id)
        try:
            self._write(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({','.join('?' * 24)})",
                r.session_id, r.tool_id, r.tool_version, r.session_type, r.owner_pid, r.owner_start, r.boot_id,
                int(r.dedup), r.workspace, dumps(r.metadata), r.started_at, r.last_activity, r.ended_at,
                r.end_reason, r.project_id, r.message_count, r.total_tokens, r.total_cost_nanos, r.resume_key,
                r.title, None, int(r.pinned), r.archived_at, r.owner_since,
            )
        except sqlite3.IntegrityError:
            if r.ended_at is None:
                raise Conflict(
                    f"{self._line}: live session {r.session_id} has the same tool and owner process, or the same "
                    f"tool and resume key, as a live session already in the database",
                    {"line": self._line, "session_id": r.session_id},
                ) from None
            raise
        if not self.dry_run:
            if r.tags:
                set_tags(self.db, r.session_id, r.tags)
            self.db.executemany(
                "INSERT INTO session_owners (session_id, seq, owner_pid, owner_start, boot_id, since, until, released) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [(r.session_id, seq, o.pid, o.start, o.boot_id, o.since, o.until, o.released)
                 for seq, o in enumerate(r.past_owners, 1)],
            )
        self._new["session"].add(r.session_id)
        if r.ended_at is None:
            self.live_sessions.append(r)
        return "imported"

    def _counted_messages(self, session_id: str) -> int:
        """How many of the session's messages its totals already count (kept in step with
        the increments this batch makes)."""
        if session_id not in self._counted:
            row = self.db.execute("SELECT message_count FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            self._counted[session_id] = row[0] if row else 0
        return self._counted[session_id]

    def _attach(self, vector: Any, ref_id: str, kind: str, project_id: str, **where: Any) -> None:
        """Store a memory's vector (a dry run only checks it fits the project's dimension)."""
        if self.dry_run:
            found = vector_store.project_dim(self.db, project_id)
            vector_store.check_dim(found, len(vector), project_id, "embedding")
        else:
            vector_store.attach(self.db, ref_id, kind, project_id, vector, **where)

    def _session_project(self, session_id: str) -> str | None:
        if session_id not in self._projects:
            row = self.db.execute("SELECT project_id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            self._projects[session_id] = row[0] if row else None
        return self._projects[session_id]

    def _context(self, r: ContextRecord) -> str:
        if not self._parent("session", "sessions", "session_id", r.session_id):
            return "imported"
        outcome = self._position(
            "context", r.session_id, r.seq,
            "SELECT coalesce((SELECT context_event_count FROM sessions WHERE session_id = ?), 0)",
        )
        if outcome == "imported" and not self.dry_run:
            event = ContextEvent(r.kind, r.subject, r.importance, r.detail)
            context_store.insert(self.db, r.session_id, self._session_project(r.session_id), event, r.created_at)
            self._write(
                "UPDATE sessions SET context_event_count = context_event_count + 1 WHERE session_id = ?", r.session_id
            )
        return outcome

    def _context_fold(self, r: ContextFoldRecord) -> str:
        if not self._parent("session", "sessions", "session_id", r.session_id):
            return "imported"
        if self.dry_run:
            return "imported"
        added = context_store.add_fold(
            self.db, r.session_id, r.kind, r.subject, r.events, r.bytes, r.first_at, r.last_at, r.max_importance,
            r.last_detail,
        )
        if not added:
            return "existing"
        key = ("context", r.session_id)
        if key in self._positions:  # the folded events come before the session's remaining ones
            self._positions[key] += r.events
        return "imported"

    def _message(self, r: MessageRecord) -> str:
        self.check_size(r.metadata)
        if not self._parent("session", "sessions", "session_id", r.session_id):
            return "imported"
        outcome = self._position(
            "message", r.session_id, r.seq, "SELECT coalesce(max(seq), 0) FROM messages WHERE session_id = ?"
        )
        if outcome == "imported" and not self.dry_run:
            message_id = self._write(
                "INSERT INTO messages (session_id, seq, role, content, message_type, metadata, tokens_used, "
                "cost_nanos, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                r.session_id, r.seq, r.role, r.content, r.message_type, dumps(r.metadata), r.tokens_used,
                r.cost_nanos, r.created_at,
            )
            if r.seq > self._counted_messages(r.session_id):
                # A session record's totals count its first message_count messages, whichever
                # batch brings them; only a message past those makes the totals grow.
                self._counted[r.session_id] += 1
                self._write(
                    "UPDATE sessions SET message_count = message_count + 1, total_tokens = total_tokens + ?, "
                    "total_cost_nanos = total_cost_nanos + ? WHERE session_id = ?",
                    r.tokens_used, r.cost_nanos, r.session_id,
                )
            search_store.index(
                self.db, "message", message_id, r.content,  # type: ignore[arg-type]
                session_id=r.session_id, project_id=self._session_project(r.session_id), created_at=r.created_at,
            )
        return outcome

    def _session_memory(self, r: SessionMemoryRecord) -> str:
        self.check_size(r.metadata)
        if self._exists("SELECT 1 FROM session_memories WHERE memory_id = ?", r.memory_id):
            return "existing"
        vector = None if r.embedding is None else vector_store.imported_vector(r.embedding)
        if not self._parent("session", "sessions", "session_id", r.session_id):
            return "imported"
        project_id = None if vector is None else self._session_project(r.session_id)
        if vector is not None and project_id is not None:
            self._attach(vector, r.memory_id, "session_memory", project_id, session_id=r.session_id)
        elif vector is not None and not (self.dry_run and r.session_id in self._new["session"]):
            raise self._invalid(f"session {r.session_id} belongs to no project, and embeddings are kept per project")
        if not self.dry_run:
            self._write(
                "INSERT INTO session_memories (memory_id, session_id, memory_type, content, metadata, created_at) "
                "VALUES (?,?,?,?,?,?)",
                r.memory_id, r.session_id, r.memory_type, r.content, dumps(r.metadata), r.created_at,
            )
            search_store.index(
                self.db, "session_memory", r.memory_id, r.content,
                session_id=r.session_id, project_id=self._session_project(r.session_id), created_at=r.created_at,
            )
        return "imported"

    def _task(self, r: TaskRecord) -> str:
        self.check_size(r.metadata)
        if (r.status == "open") != (r.ended_at is None):
            raise self._invalid("an open task has no ended_at, and a finished one has one")
        if self._exists("SELECT 1 FROM tasks WHERE task_id = ?", r.task_id):
            return "existing"
        self._new["task"].add(r.task_id)
        if not self._parent("session", "sessions", "session_id", r.session_id):
            return "imported"
        try:
            self._write(
                "INSERT INTO tasks (task_id, session_id, title, status, external_id, metadata, created_at, "
                "updated_at, ended_at) VALUES (?,?,?,?,?,?,?,?,?)",
                r.task_id, r.session_id, r.title, r.status, r.external_id, dumps(r.metadata), r.created_at,
                r.updated_at, r.ended_at,
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"{self._line}: an open task already has external id {r.external_id!r}",
                {"line": self._line, "external_id": r.external_id},
            ) from None
        return "imported"

    def _interaction(self, r: InteractionRecord) -> str:
        self.check_size(r.metadata)
        if not self._parent("task", "tasks", "task_id", r.task_id):
            return "imported"
        outcome = self._position("interaction", r.task_id, r.seq, "SELECT count(*) FROM interactions WHERE task_id = ?")
        if outcome == "imported":
            self._write(
                "INSERT INTO interactions (task_id, kind, content, metadata, created_at) VALUES (?,?,?,?,?)",
                r.task_id, r.kind, r.content, dumps(r.metadata), r.created_at,
            )
        return outcome
