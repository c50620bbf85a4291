"""What handlers share: size and nesting checks, and finding the session or project a request names."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from omnid_client.errors import Conflict, Invalid, NotFound, StorageError, TooLarge
from omnid_client.protocol import MAX_METADATA_BYTES, MAX_NESTING, Session

from ..projects import locate
from ..store import projects as project_store, sessions as session_store
from ..store.codec import dumps
from ._context import Context


def check_size(value: Any, limit: int = MAX_METADATA_BYTES, field: str = "metadata") -> None:
    """The document must be storable as JSON, no larger than ``limit`` bytes as JSON, and
    nested no deeper than ``MAX_NESTING``."""
    if not value and isinstance(value, dict):
        return
    depth = nesting(value, MAX_NESTING)
    if depth > MAX_NESTING:
        raise TooLarge(
            f"{field} nests more than {MAX_NESTING} levels deep; the limit is {MAX_NESTING}", {"field": field}
        )
    try:
        size = len(dumps(value))
    except (TypeError, ValueError, OverflowError) as e:
        raise Invalid(f"{field} cannot be stored as JSON: {e}", {"field": field}) from None
    if size > limit:
        raise TooLarge(f"{field} is {size} bytes encoded; the limit is {limit}", {"field": field})


def current(ctx: Context, session: Session) -> Session:
    """The session with any last_activity bump still waiting for a commit applied."""
    pending = ctx.store.pending_activity(session.session_id)
    if pending is not None and session.ended_at is None and pending > session.last_activity:
        session.last_activity = pending
    return session


def nesting(value: Any, stop_past: int) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), counted without
    recursion; counting stops once it passes ``stop_past``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_past:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def existing_session(ctx: Context, session_id: str) -> Session:
    session = session_store.get(ctx.store.db, session_id)
    if session is None:
        raise no_session(session_id)
    return current(ctx, session)


def live_session(ctx: Context, session_id: str) -> Session:
    """The session, which must not have ended: content is only added to live sessions."""
    session = existing_session(ctx, session_id)
    if session.end_reason is not None:
        raise _ended(session_id, session.end_reason)
    return session


def live_totals(ctx: Context, session_id: str) -> session_store.Totals:
    """``live_session`` for the busiest writers: only the part of the row they need (kept
    from their last write to it, when nothing else wrote since: ``KnownTotals``)."""
    totals = ctx.live_sessions.totals.get(session_id)
    if totals is None:
        raise no_session(session_id)
    if totals.end_reason is not None:
        raise _ended(session_id, totals.end_reason)
    return totals


def no_session(session_id: str) -> NotFound:
    return NotFound(f"no session {session_id}", {"session_id": session_id})


def _ended(session_id: str, end_reason: str) -> Conflict:
    return Conflict(
        f"session {session_id} has ended ({end_reason})", {"session_id": session_id, "end_reason": end_reason}
    )


def project_of(ctx: Context, project_id: str | None, workspace: str | None, *, create: bool) -> str:
    """The project named by id, or the one containing ``workspace`` (recorded if ``create``)."""
    store = ctx.store
    if (project_id is None) == (workspace is None):
        raise Invalid("name the project with exactly one of project_id or workspace", {"field": "project_id"})
    if workspace is not None:
        found = locate(workspace)
        if create:
            project_store.ensure(store.db, found, store.now())
            return found.project_id
        project_id = found.project_id
    assert project_id is not None
    if not project_store.exists(store.db, project_id):
        raise NotFound(f"no project {project_id}", {"project_id": project_id})
    return project_id


async def committed(ctx: Context) -> None:
    """Wait until the open transaction (holding this request's write) commits; its
    StorageError if it cannot. A reply from a handler that went on in the background is sent
    when the handler is done, so it must not be done before its write is durable."""
    waited: asyncio.Future[StorageError | None] = asyncio.get_running_loop().create_future()
    ctx.store.after_commit(waited.set_result)
    error = await waited
    if error is not None:
        raise error
