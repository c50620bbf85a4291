"""What ``omnid top`` shows: live sessions and recent endings, loaded by one list and then kept up by events.

Nothing here talks to the daemon or the terminal: ``Board.load`` takes what the lists returned,
``Board.apply`` one event, and the views read ``visible``, ``totals`` and ``endings``.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from omnid_client.protocol import Event, Session

LINGER = 5.0
"""Seconds an ended session stays in the table (dimmed) before it moves to the endings strip."""
HOUR = 3600.0
KEPT_ENDINGS = 500


@dataclass
class Row:
    session_id: str
    tool: str
    pid: int | None
    project_id: str | None
    workspace: str | None
    started_at: float
    last_activity: float
    messages: int = 0
    tokens: int = 0
    cost: float = 0.0
    ended_at: float | None = None
    end_reason: str | None = None
    title: str | None = None

    @property
    def project(self) -> str:
        """The project as a person knows it: its folder's name (else its id)."""
        if self.workspace:
            return os.path.basename(self.workspace.rstrip("/")) or self.workspace
        return self.project_id or "-"

    @classmethod
    def of(cls, s: Session) -> Row:
        return cls(
            s.session_id, s.tool_id, s.owner_pid, s.project_id, s.workspace, s.started_at, s.last_activity,
            s.message_count, s.total_tokens, s.total_cost, s.ended_at, s.end_reason, s.title,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "tool_id": self.tool, "owner_pid": self.pid,
            "project_id": self.project_id, "project": self.project, "workspace": self.workspace,
            "started_at": self.started_at, "last_activity": self.last_activity, "message_count": self.messages,
            "total_tokens": self.tokens, "total_cost": self.cost, "ended_at": self.ended_at,
            "end_reason": self.end_reason,
        }


SORTS: dict[str, tuple[Callable[[Row], Any], bool]] = {
    "active": (lambda r: r.last_activity, True),
    "age": (lambda r: -r.started_at, True),
    "tool": (lambda r: r.tool.lower(), False),
    "project": (lambda r: r.project.lower(), False),
    "pid": (lambda r: r.pid or 0, False),
    "msgs": (lambda r: r.messages, True),
    "tokens": (lambda r: r.tokens, True),
    "cost": (lambda r: r.cost, True),
}
"""Sort keys in the order ``s`` cycles through them, each with its natural direction
(True: largest first)."""
SORT_NAMES = tuple(SORTS)


def matches(row: Row, text: str) -> bool:
    """Whether ``row`` passes a filter: words all match (``tool:x``, ``project:y``, or either)."""
    for word in text.lower().split():
        where, sep, what = word.partition(":")
        if sep and where == "tool":
            if what not in row.tool.lower():
                return False
        elif sep and where == "project":
            if not any(what in v.lower() for v in (row.project, row.project_id or "", row.workspace or "")):
                return False
        elif not any(word in v.lower() for v in (row.tool, row.project, row.project_id or "", row.session_id)):
            return False
    return True


@dataclass
class Totals:
    live: int
    by_tool: list[tuple[str, int]]
    ended_hour: int
    reaped_hour: int
    messages: int
    tokens: int
    cost: float


@dataclass
class Metrics:
    """What the daemon's metrics say about reuse (None: it has not counted any yet)."""

    reuse_rate: float | None
    p50: float | None
    """get_or_create's median latency, in seconds."""
    p99: float | None


@dataclass
class Board:
    rows: dict[str, Row] = field(default_factory=dict)
    """Live sessions, and ended ones for LINGER seconds after their end."""
    endings: deque[Row] = field(default_factory=lambda: deque(maxlen=KEPT_ENDINGS))
    """Sessions that ended, most recent last."""
    seq: int = 0
    """The last event's sequence number (or the head when the lists were read)."""
    down: str | None = None
    """Why the daemon cannot be reached right now (None: following it)."""
    version: int = 0
    """Bumped on every change, so views know when to draw again."""
    metrics: Metrics | None = None
    """None where the daemon keeps no metrics."""
    changed: set[str] = field(default_factory=set)
    """Sessions events were about since the view last cleared this."""

    def load(self, head: int, live: Iterable[Session], ended: Iterable[Session], now: float) -> None:
        """Start over from the lists: the live sessions, and the recently ended ones."""
        self.rows = {s.session_id: Row.of(s) for s in live}
        recent = sorted((Row.of(s) for s in ended if s.ended_at and now - s.ended_at < HOUR), key=_ended_at)
        self.endings.clear()
        self.endings.extend(recent)
        self.seq = head
        self.down = None
        self.version += 1

    def apply(self, event: Event, now: float) -> bool:
        """Take in one event; False when it is a gap (what was missed must be listed again)."""
        self.seq = event.seq
        if event.kind == "gap":
            return False
        sid, data = event.session_id, event.data
        row = self.rows.get(sid) if sid else None
        if sid:
            self.changed.add(sid)
        if event.kind == "session.created" and sid:
            self.rows[sid] = Row(
                sid, event.tool_id or "?", data.get("owner_pid"), event.project_id, data.get("workspace"),
                data.get("started_at") or event.at, data.get("started_at") or event.at,
            )
        elif row is None:
            return True
        elif event.kind == "session.ended":
            row.ended_at = data.get("ended_at") or event.at
            row.end_reason = data.get("end_reason") or "ended"
            row.last_activity = max(row.last_activity, row.ended_at)
        elif event.kind == "session.resumed":
            row.ended_at = row.end_reason = None
            row.pid = data.get("owner_pid", row.pid)
        elif event.kind in ("session.activity", "message.added"):
            row.last_activity = max(row.last_activity, data.get("last_activity") or event.at)
            row.messages = data.get("message_count", row.messages)
            row.tokens = data.get("total_tokens", row.tokens)
            row.cost = data.get("total_cost", row.cost)
        elif event.kind in ("context.appended", "memory.put"):
            row.last_activity = max(row.last_activity, event.at)
        else:
            return True
        self.version += 1
        return True

    def expire(self, now: float) -> None:
        """Move the sessions that ended over LINGER seconds ago out of the table."""
        gone = [r for r in self.rows.values() if r.ended_at is not None and now - r.ended_at >= LINGER]
        for row in sorted(gone, key=_ended_at):
            del self.rows[row.session_id]
            self.endings.append(row)
        if gone:
            self.version += 1

    def lingering(self) -> bool:
        return any(r.ended_at is not None for r in self.rows.values())

    def visible(self, sort: str, reverse: bool, text: str) -> list[Row]:
        key, largest_first = SORTS[sort]
        rows = [r for r in self.rows.values() if not text or matches(r, text)]
        rows.sort(key=lambda r: r.session_id)  # a stable order among equals
        rows.sort(key=key, reverse=largest_first != reverse)
        return rows

    def recent_endings(self, now: float, text: str = "") -> list[Row]:
        """Endings of the last hour, most recent first, that pass the filter."""
        return [r for r in reversed(self.endings) if now - (r.ended_at or 0) < HOUR and (not text or matches(r, text))]

    def totals(self, now: float) -> Totals:
        live = [r for r in self.rows.values() if r.ended_at is None]
        hour = [r for r in (*self.endings, *self.rows.values()) if r.ended_at is not None and now - r.ended_at < HOUR]
        return Totals(
            len(live),
            Counter(r.tool for r in live).most_common(),
            len(hour),
            sum(1 for r in hour if r.end_reason == "reaped"),
            sum(r.messages for r in live),
            sum(r.tokens for r in live),
            sum(r.cost for r in live),
        )


def _ended_at(row: Row) -> float:
    return row.ended_at or 0.0
