"""Events staged by the writes that cause them: held on the store's connection with the
open transaction, dropped with whatever part of it is rolled back, and handed to the
store's ``on_commit`` only once it has committed."""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple


class Staged(NamedTuple):
    kind: str
    session_id: str | None
    tool_id: str | None
    project_id: str | None
    data: dict[str, Any]
    content: list[str] | None = None
    """Message contents: sent to subscribers that ask, never written to the event log."""


ACTIVITY = "_activity"
"""A staged marker, never published: the session was active (its summary is due)."""


def stage(
    db: sqlite3.Connection,
    kind: str,
    *,
    session_id: str | None = None,
    tool_id: str | None = None,
    project_id: str | None = None,
    content: list[str] | None = None,
    **data: Any,
) -> None:
    """Stage an event with the open transaction of the store's connection. Writes on any
    other connection (offline tools, with no daemon to tell) stage nothing."""
    pending = getattr(db, "pending_events", None)
    if pending is not None and db.in_transaction:
        pending.append(Staged(kind, session_id, tool_id, project_id, data, content))
