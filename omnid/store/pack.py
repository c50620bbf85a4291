"""The candidates of a context pack: each section's items in priority order, read with a
bounded number of rows whatever the session's or project's size.

Reading for a pack is not an access: it bumps no memory's accessed_count, so the same
data always gives the same pack.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from omnid_client.protocol import PackContext, PackItem, PackSection, Session

from .codec import loads

FILE_WINDOW = 200
"""Files are ranked among the session's this-many most recently read, and most recently
changed, distinct paths (or ten times the cap, if more)."""
HALF_LIFE = 3600.0
"""A file's recency weight halves for every hour between its last use and the session's
latest file use (not the clock: the pack depends on the data only)."""
CHECKPOINT_PREFIX = "checkpoint/"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_NOT_CHECKPOINT = "NOT (key >= 'checkpoint/' AND key < 'checkpoint0')"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def metadata_text(metadata: dict[str, Any], key: str) -> str | None:
    """A session's title, goal or summary from its metadata (a string, or JSON of anything else)."""
    value = metadata.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


DESCRIBED = ("title", "goal", "summary")


def described(session: Session | None) -> dict[str, str | None]:
    """A session's title (its own field, set by session.update, or else its metadata's
    "title"), goal and summary (its metadata's "goal" and "summary")."""
    if session is None:
        return dict.fromkeys(DESCRIBED)
    found = {key: metadata_text(session.metadata, key) for key in DESCRIBED}
    if session.title:
        found["title"] = session.title
    return found


def header(session: Session | None, limit: int) -> PackSection:
    items = []
    if session is not None:
        found = described(session)
        for key, label in (("title", "Title"), ("goal", "Goal"), ("summary", "Summary")):
            text = found[key]
            if text is not None:
                items.append(PackItem(key, f"**{label}:** {_one_line(text, limit)}", 0))
    return PackSection("session", "Session", items, len(items), 0)


def files(db: sqlite3.Connection, session_id: str, cap: int, limit: int) -> PackSection:
    """Files read or changed, one entry per path, by importance x recency, among each kind's
    ``FILE_WINDOW`` (at least ten times the cap) most recently used paths."""
    window = max(FILE_WINDOW, 10 * cap)
    paths: dict[str, list[Any]] = {}  # path -> [importance, last_at, reads, changes]
    for kind in ("file_access", "file_change"):
        rows = db.execute(
            "SELECT subject, events, last_at, max_importance FROM context_rollup "
            "WHERE session_id = ? AND kind = ? ORDER BY last_at DESC LIMIT ?",
            (session_id, kind, window),
        )
        for path, events, last_at, importance in rows:
            entry = paths.setdefault(path, [0.0, last_at, 0, 0])
            entry[1] = max(entry[1], last_at)
            if kind == "file_access":
                entry[0] = max(entry[0], importance)
                entry[2] = events
            else:
                entry[0] = max(entry[0], 0.5)
                entry[3] = events
    available = db.execute(
        "SELECT (SELECT count(*) FROM context_rollup WHERE session_id = ?1 AND kind = 'file_access') + "
        "(SELECT count(*) FROM context_rollup c WHERE session_id = ?1 AND kind = 'file_change' AND NOT EXISTS "
        "(SELECT 1 FROM context_rollup r "
        "WHERE r.session_id = ?1 AND r.kind = 'file_access' AND r.subject = c.subject))",
        (session_id,),
    ).fetchone()[0]
    if not paths:
        return PackSection("files", "Files", [], available, available)
    newest = max(e[1] for e in paths.values())
    scored = sorted(
        ((e[0] * 0.5 ** ((newest - e[1]) / HALF_LIFE), path, e) for path, e in paths.items()),
        key=lambda t: (-t[0], -t[2][1], t[1]),
    )
    items = []
    for score, path, (importance, last_at, reads, changes) in scored[:cap]:
        notes = [f"importance {importance:.2f}"]
        if reads:
            notes.append(f"read {reads}x")
        if changes:
            change = db.execute(
                "SELECT last_detail FROM context_rollup WHERE session_id = ? AND kind = 'file_change' AND subject = ?",
                (session_id, path),
            ).fetchone()[0]
            notes.append(f"changed {changes}x" + (f" ({_one_line(change, 80)})" if change else ""))
        text = f"`{_one_line(path, limit)}` ({', '.join(notes)})"
        items.append(PackItem(path, text, 0, last_at, round(score, 6)))
    return PackSection("files", "Files", items, available, 0)


def decisions(db: sqlite3.Connection, session_id: str, cap: int, limit: int) -> PackSection:
    """The newest decisions, one per text."""
    rows = db.execute(
        "SELECT subject, detail, created_at FROM context_events WHERE session_id = ? AND kind = 'decision' "
        "ORDER BY event_id DESC LIMIT ?",
        (session_id, cap * 4),
    )
    items: list[PackItem] = []
    seen: set[str] = set()
    for subject, detail, at in rows:
        if subject in seen:
            continue
        seen.add(subject)
        if len(items) < cap:
            text = subject if detail is None else f"{subject} — {detail}"
            items.append(PackItem(subject, _one_line(text, limit), 0, at))
    available = db.execute(
        "SELECT count(*) FROM context_events WHERE session_id = ? AND kind = 'decision'", (session_id,)
    ).fetchone()[0]
    return PackSection("decisions", "Decisions", items, available, 0)


def searches(db: sqlite3.Connection, session_id: str, cap: int, limit: int) -> PackSection:
    """The newest distinct queries, with how often each ran."""
    rows = db.execute(
        "SELECT subject, events, last_at FROM context_rollup WHERE session_id = ? AND kind = 'search' "
        "ORDER BY last_at DESC, subject LIMIT ?",
        (session_id, cap),
    )
    items = [
        PackItem(query, f"`{_one_line(query, limit)}`" + (f" ({n}x)" if n > 1 else ""), 0, at) for query, n, at in rows
    ]
    available = db.execute(
        "SELECT count(*) FROM context_rollup WHERE session_id = ? AND kind = 'search'", (session_id,)
    ).fetchone()[0]
    return PackSection("searches", "Recent searches", items, available, 0)


def memories(db: sqlite3.Connection, project_id: str | None, cap: int, limit: int, now: float) -> PackSection:
    """The project's live memories (checkpoints aside): most accessed and most recent in
    turn, each once."""
    if project_id is None:
        return PackSection("memories", "Project memories", [], 0, 0)
    columns = "memory_id, key, value, accessed_count, coalesce(last_accessed, updated_at)"
    where = f"project_id = ? AND {_LIVE} AND {_NOT_CHECKPOINT}"
    most_accessed = db.execute(
        f"SELECT {columns} FROM memories WHERE {where} ORDER BY accessed_count DESC, memory_id LIMIT ?",
        (project_id, now, cap),
    ).fetchall()
    most_recent = db.execute(
        f"SELECT {columns} FROM memories WHERE {where} "
        "ORDER BY coalesce(last_accessed, updated_at) DESC, memory_id LIMIT ?",
        (project_id, now, cap),
    ).fetchall()
    items: list[PackItem] = []
    seen: set[str] = set()
    padded = [rows + [None] * (cap - len(rows)) for rows in (most_accessed, most_recent)]
    for pair in zip(*padded, strict=True):
        for row in pair:
            if row is None or row[0] in seen or len(items) >= cap:
                continue
            seen.add(row[0])
            _, key, value, reads, at = row
            decoded = loads(value)
            text = decoded if isinstance(decoded, str) else value
            items.append(PackItem(key, _one_line(f"**{key}:** {text}", limit), 0, at, float(reads)))
    available = db.execute(f"SELECT count(*) FROM memories WHERE {where}", (project_id, now)).fetchone()[0]
    return PackSection("memories", "Project memories", items, available, 0)


def tasks(db: sqlite3.Connection, session_id: str | None, project_id: str | None, cap: int, limit: int) -> PackSection:
    """Open tasks of the session (with a project: of all its sessions), latest updated first."""
    if session_id is None and project_id is None:
        return PackSection("tasks", "Open tasks", [], 0, 0)
    arg: str | None
    if project_id is not None:
        scope = "session_id IN (SELECT session_id FROM sessions WHERE project_id = ?)"
        arg = project_id
    else:
        scope, arg = "session_id = ?", session_id
    rows = db.execute(
        f"SELECT task_id, title, updated_at FROM tasks WHERE {scope} AND status = 'open' "
        "ORDER BY updated_at DESC, task_id LIMIT ?",
        (arg, cap),
    )
    items = [PackItem(task_id, f"{_one_line(title, limit)} (`{task_id}`)", 0, at) for task_id, title, at in rows]
    available = db.execute(f"SELECT count(*) FROM tasks WHERE {scope} AND status = 'open'", (arg,)).fetchone()[0]
    return PackSection("tasks", "Open tasks", items, available, 0)


def messages(db: sqlite3.Connection, session_id: str, cap: int, limit: int) -> PackSection:
    """The last messages, newest first (the Markdown shows them oldest first)."""
    rows = db.execute(
        "SELECT seq, role, content, created_at FROM messages WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
        (session_id, cap),
    )
    items = [PackItem(str(seq), f"**{role}:** {_one_line(content, limit)}", 0, at) for seq, role, content, at in rows]
    available = db.execute("SELECT message_count FROM sessions WHERE session_id = ?", (session_id,)).fetchone()[0]
    return PackSection("messages", "Last messages", items, available, 0)


def candidates(
    db: sqlite3.Connection, p: PackContext, session: Session | None, project_id: str | None, now: float
) -> list[PackSection]:
    """Every section's candidates, in the pack's order: session header, files, decisions,
    searches, memories, tasks, messages."""
    limit = p.max_item_chars
    sid = session.session_id if session is not None else None
    empty = {name: PackSection(name, heading, [], 0, 0) for name, heading in (  # type: ignore[arg-type]
        ("files", "Files"), ("decisions", "Decisions"), ("searches", "Recent searches"), ("messages", "Last messages"))}
    return [
        header(session, limit),
        files(db, sid, p.max_files, limit) if sid else empty["files"],
        decisions(db, sid, p.max_decisions, limit) if sid else empty["decisions"],
        searches(db, sid, p.max_searches, limit) if sid else empty["searches"],
        memories(db, project_id, p.max_memories, limit, now),
        tasks(
            db, sid if p.session_id is not None else None, project_id if p.session_id is None else None,
            p.max_tasks, limit,
        ),
        messages(db, sid, p.max_messages, limit) if sid else empty["messages"],
    ]
