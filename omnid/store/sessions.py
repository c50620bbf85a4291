"""Queries on the sessions table, the owners sessions had, and their tags."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Iterable, NamedTuple

import msgspec

from omnid_client.protocol import ArchivedFilter, Session, SessionOwner

from ..identity import ProcessIdentity
from .codec import decode_cursor, dumps, encode_cursor, from_nanos, loads_dict
from .events import ACTIVITY, stage

if TYPE_CHECKING:
    from . import Store

COLUMNS = (
    "session_id, tool_id, tool_version, session_type, owner_pid, owner_start, boot_id, "
    "workspace, metadata, started_at, last_activity, ended_at, end_reason, project_id, "
    "message_count, total_tokens, total_cost_nanos, resume_key, title, tags, pinned, archived_at, owner_since"
)
_INSERTED = (
    "session_id, tool_id, tool_version, session_type, owner_pid, owner_start, boot_id, workspace, metadata, "
    "started_at, last_activity, ended_at, end_reason, project_id, resume_key, dedup, owner_ino"
)
_tags = msgspec.json.Decoder(list[str]).decode


def _session(row: tuple) -> Session:
    return Session(*(
        *row[:8], loads_dict(row[8]), *row[9:16], from_nanos(row[16]), row[17], row[18],
        _tags(row[19]) if row[19] else [], bool(row[20]), row[21], row[22],
    ))


def insert(db: sqlite3.Connection, s: Session, *, dedup: bool, owner_ino: int | None = None) -> None:
    db.execute(
        f"INSERT INTO sessions ({_INSERTED}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            s.session_id, s.tool_id, s.tool_version, s.session_type, s.owner_pid, s.owner_start,
            s.boot_id, s.workspace, dumps(s.metadata), s.started_at, s.last_activity,
            s.ended_at, s.end_reason, s.project_id, s.resume_key, int(dedup), owner_ino,
        ),
    )
    stage(
        db, "session.created", session_id=s.session_id, tool_id=s.tool_id, project_id=s.project_id,
        tool_version=s.tool_version, session_type=s.session_type, owner_pid=s.owner_pid, workspace=s.workspace,
        started_at=s.started_at,
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
    context_folded: int


def totals(db: sqlite3.Connection, session_id: str) -> Totals | None:
    row = db.execute(
        "SELECT end_reason, project_id, message_count, total_tokens, total_cost_nanos, context_event_count, "
        "context_folded FROM sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    return Totals(*row) if row else None


class KnownTotals:
    """The ``Totals`` that writes left on the rows of sessions written lately, carried from
    one write block to the next, so that the busiest writers (message.add, context.append)
    read no row for them when they write one session after another.

    An entry is trusted only while every write block since the last ``put`` was one that
    kept the entries up to date (it ``put`` last): any other write block, committed or
    rolled back, empties them at the next ``get``, and so does a lost batch. (Every change
    to the database goes through ``Store.write``.)"""

    LIMIT = 1024

    def __init__(self, store: "Store"):
        self._store = store
        self._seen = -1
        """``store.writes`` after the last write block that ``put``."""
        self._known: dict[str, Totals] = {}
        store.on_rollback(self.clear)

    def get(self, session_id: str) -> Totals | None:
        """The session's totals now, inside a write block (None: no such session)."""
        store = self._store
        if self._seen != store.writes - 1:
            self._known.clear()
        found = self._known.get(session_id)
        return found if found is not None else totals(store.db, session_id)

    def put(self, session_id: str, kept: Totals) -> None:
        """What this write block, about to end, left on the session's row."""
        if len(self._known) >= self.LIMIT:
            self._known.clear()
        self._known[session_id] = kept
        self._seen = self._store.writes

    def clear(self) -> None:
        self._known.clear()
        self._seen = -1


def find_live(db: sqlite3.Connection, tool_id: str, owner: ProcessIdentity) -> Session | None:
    """The live deduplicated session of this tool and process (a session recorded with
    another pidfd inode was another process's, which had the same pid and start tick)."""
    row = db.execute(
        f"SELECT {COLUMNS} FROM sessions WHERE tool_id = ? AND owner_pid = ? AND owner_start = ? "
        "AND boot_id = ? AND ended_at IS NULL AND dedup = 1 AND (owner_ino IS NULL OR ?5 IS NULL OR owner_ino = ?5)",
        (tool_id, owner.pid, owner.start, owner.boot_id, owner.ino),
    ).fetchone()
    return _session(row) if row else None


class Keyed(NamedTuple):
    """A session found by its resume key, with what the wire's Session does not carry."""

    session: Session
    dedup: bool
    """Whether it is deduplicated by owner process."""
    owner: ProcessIdentity | None
    """Its (current or last) owner, pidfd inode included where it was recorded."""


def by_resume_key(db: sqlite3.Connection, tool_id: str, resume_key: str) -> Keyed | None:
    """The tool's session with this key: the live one if there is one, else the newest."""
    row = db.execute(
        f"SELECT {COLUMNS}, dedup, owner_ino FROM sessions WHERE tool_id = ? AND resume_key = ? "
        "ORDER BY ended_at IS NULL DESC, started_at DESC LIMIT 1",
        (tool_id, resume_key),
    ).fetchone()
    if row is None:
        return None
    session = _session(row[:-2])
    return Keyed(session, bool(row[-2]), owner_identity(session, row[-1]))


def owner_identity(s: Session, ino: int | None = None) -> ProcessIdentity | None:
    """The process ``s`` is (or was last) bound to, as recorded; None if it never had one."""
    if s.owner_pid is None:
        return None
    return ProcessIdentity(s.owner_pid, s.owner_start or 0, s.boot_id or "", ino)


def rebind(db: sqlite3.Connection, previous: Session, owner: ProcessIdentity, now: float) -> None:
    """Give a session to ``owner`` (pidfd inode included) and make it live again, recording
    its previous owner (who lost it the way it ended, or by dying while it was still live)."""
    sid = previous.session_id
    seq = db.execute("SELECT count(*) + 1 FROM session_owners WHERE session_id = ?", (sid,)).fetchone()[0]
    db.execute(
        "INSERT INTO session_owners (session_id, seq, owner_pid, owner_start, boot_id, since, until, released) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (
            previous.session_id, seq, previous.owner_pid, previous.owner_start, previous.boot_id,
            previous.owner_since or previous.started_at,
            previous.ended_at if previous.ended_at is not None else now, previous.end_reason or "died",
        ),
    )
    db.execute(
        "UPDATE sessions SET owner_pid = ?, owner_start = ?, boot_id = ?, owner_ino = ?, owner_since = ?, "
        "ended_at = NULL, end_reason = NULL, archived_at = NULL, last_activity = max(last_activity, ?) "
        "WHERE session_id = ?",
        (owner.pid, owner.start, owner.boot_id, owner.ino, now, now, previous.session_id),
    )
    stage(
        db, "session.resumed", session_id=sid, tool_id=previous.tool_id, project_id=previous.project_id,
        owner_pid=owner.pid, previous_owner_pid=previous.owner_pid, released=previous.end_reason or "died",
        resume_key=previous.resume_key,
    )


def set_tracked(db: sqlite3.Connection, session_id: str) -> bool:
    """Mark a live session as wanting its workspace's file changes recorded; False if it
    already did (or is not live)."""
    cur = db.execute(
        "UPDATE sessions SET track_workspace = 1 WHERE session_id = ? AND ended_at IS NULL AND track_workspace = 0",
        (session_id,),
    )
    return cur.rowcount == 1


def owners(db: sqlite3.Connection, s: Session) -> list[SessionOwner]:
    """Every owner ``s`` has had, oldest first, its current (or last) one included."""
    rows = db.execute(
        "SELECT owner_pid, owner_start, boot_id, since, until, released FROM session_owners "
        "WHERE session_id = ? ORDER BY seq",
        (s.session_id,),
    ).fetchall()
    history = [SessionOwner(*row) for row in rows]
    history.append(
        SessionOwner(s.owner_pid, s.owner_start, s.boot_id, s.owner_since or s.started_at, s.ended_at, s.end_reason)
    )
    return history


def contents(db: sqlite3.Connection, session_id: str) -> tuple[int, int, int, int]:
    """How many messages, context events, session memories and tasks a session holds."""
    return db.execute(
        "SELECT message_count, context_event_count, "
        "(SELECT count(*) FROM session_memories WHERE session_id = ?1), "
        "(SELECT count(*) FROM tasks WHERE session_id = ?1) FROM sessions WHERE session_id = ?1",
        (session_id,),
    ).fetchone()


def set_tags(db: sqlite3.Connection, session_id: str, tags: Iterable[str]) -> list[str]:
    """Make ``tags`` the session's tags; returns them as stored (sorted, each once)."""
    stored = sorted(set(tags))
    db.execute("DELETE FROM session_tags WHERE session_id = ?", (session_id,))
    db.executemany("INSERT INTO session_tags (tag, session_id) VALUES (?, ?)", [(t, session_id) for t in stored])
    db.execute("UPDATE sessions SET tags = ? WHERE session_id = ?", (dumps(stored) if stored else None, session_id))
    return stored


def edit(
    db: sqlite3.Connection,
    session_id: str,
    *,
    title: str | None = None,
    metadata: dict | None = None,
    pinned: bool | None = None,
    archived_at: float | None = None,
    unarchive: bool,
) -> None:
    """Set the given columns of one session (None leaves a column as it is; an empty
    ``title`` removes it)."""
    sets: list[str] = []
    args: list[object] = []
    if title is not None:
        sets.append("title = ?")
        args.append(title or None)
    if metadata is not None:
        sets.append("metadata = ?")
        args.append(dumps(metadata))
    if pinned is not None:
        sets.append("pinned = ?")
        args.append(int(pinned))
    if archived_at is not None:
        sets.append("archived_at = coalesce(archived_at, ?)")
        args.append(archived_at)
    elif unarchive:
        sets.append("archived_at = NULL")
    if sets:
        db.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE session_id = ?", (*args, session_id))


class LiveLookups:
    """``find_live`` and ``get`` answers kept until the next write: a get_or_create that
    reuses a session (what every tool does at start, and many on every request), and a
    session.get, then run no SQL.

    Any write block, committed or not, empties it, and only rows read outside a
    transaction are kept, so an answer from here is never older than the committed
    database. (Every change to the database goes through ``Store.write``.)"""

    LIMIT = 4096
    """Most answers of each kind kept."""

    def __init__(self, store: "Store"):
        self._store = store
        self._writes_seen = -1
        self._found: dict[tuple[str, int, int, str, int | None], Session] = {}
        self._by_id: dict[str, Session] = {}
        self.totals = KnownTotals(store)
        """The counters of sessions being written (message.add, context.append)."""

    def _fresh(self) -> "Store":
        store = self._store
        if self._writes_seen != store.writes:
            self._found.clear()
            self._by_id.clear()
            self._writes_seen = store.writes
        return store

    def find_live(self, tool_id: str, owner: ProcessIdentity) -> Session | None:
        store = self._fresh()
        key = (tool_id, owner.pid, owner.start, owner.boot_id, owner.ino)
        session = self._found.get(key)
        if session is None:
            session = find_live(store.db, tool_id, owner)
            if session is not None and not store.in_transaction and len(self._found) < self.LIMIT:
                self._found[key] = session
        return session

    def get(self, session_id: str) -> Session | None:
        store = self._fresh()
        session = self._by_id.get(session_id)
        if session is None:
            session = get(store.db, session_id)
            if session is not None and not store.in_transaction and len(self._by_id) < self.LIMIT:
                self._by_id[session_id] = session
        return session


def touch(db: sqlite3.Connection, session_id: str, now: float) -> bool:
    """Move last_activity of a live session; False if it is not live."""
    cur = db.execute(
        "UPDATE sessions SET last_activity = ? WHERE session_id = ? AND ended_at IS NULL", (now, session_id)
    )
    if cur.rowcount == 1:
        stage(db, ACTIVITY, session_id=session_id)
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
            stage(db, "session.ended", session_id=sid, end_reason=reason, ended_at=now)
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


_BY_STATUS = {"live": "ended_at IS NULL", "ended": "ended_at IS NOT NULL", "all": ""}
_BY_ARCHIVED = {"exclude": "archived_at IS NULL", "only": "archived_at IS NOT NULL", "include": ""}


def page(
    db: sqlite3.Connection,
    *,
    tool_id: str | None,
    session_type: str | None,
    status: str,
    workspace: str | None,
    limit: int,
    cursor: str | None,
    tag: str | None = None,
    archived: ArchivedFilter = "exclude",
    pinned: bool | None = None,
    project_id: str | None = None,
) -> tuple[list[Session], str | None]:
    """Sessions newest first, ``limit`` at a time, resuming after ``cursor``."""
    where = [c for c in (_BY_STATUS[status], _BY_ARCHIVED[archived]) if c]
    args: list[object] = []
    for condition, value in (
        ("tool_id = ?", tool_id), ("session_type = ?", session_type), ("workspace = ?", workspace),
        ("session_id IN (SELECT session_id FROM session_tags WHERE tag = ?)", tag),
        ("pinned = ?", None if pinned is None else int(pinned)), ("project_id = ?", project_id),
    ):
        if value is not None:
            where.append(condition)
            args.append(value)
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
