"""Daemon methods: status, reap, shutdown, stats, orphan cleanup."""

from __future__ import annotations

from omnid_client.protocol import CleanupOrphans, CleanupResult, DaemonStatus, Empty, Reap, ReapResult, ServiceStats

from ..store import memories as memory_store
from ..store import search as search_store
from ..store import tasks as task_store
from ..store.codec import from_nanos
from . import Caller, handles


@handles("daemon.status")
def status(caller: Caller, _: Empty) -> DaemonStatus:
    return caller.daemon.status()


@handles("daemon.reap")
def reap(caller: Caller, p: Reap) -> ReapResult:
    return caller.daemon.reaper.sweep(trigger="manual", dry_run=p.dry_run)


@handles("daemon.shutdown")
def shutdown(caller: Caller, _: Empty) -> Empty:
    caller.daemon.request_stop(f"shutdown requested by pid {caller.pid}")
    return Empty()


@handles("daemon.stats")
def stats(caller: Caller, _: Empty) -> ServiceStats:
    store = caller.daemon.store
    db = store.db
    now = store.now()
    sessions, live, messages, tokens, nanos, avg_seconds = db.execute(
        "SELECT count(*), coalesce(sum(ended_at IS NULL), 0), coalesce(sum(message_count), 0), "
        "coalesce(sum(total_tokens), 0), coalesce(sum(total_cost_nanos), 0), "
        "avg(CASE WHEN ended_at IS NOT NULL THEN ended_at - started_at END) FROM sessions"
    ).fetchone()
    tasks, open_tasks = db.execute("SELECT count(*), coalesce(sum(status = 'open'), 0) FROM tasks").fetchone()
    by_tool = dict(db.execute("SELECT tool_id, count(*) FROM sessions GROUP BY tool_id ORDER BY 2 DESC LIMIT 100"))
    return ServiceStats(
        sessions=sessions,
        live_sessions=live,
        ended_sessions=sessions - live,
        projects=db.execute("SELECT count(*) FROM projects").fetchone()[0],
        messages=messages,
        total_tokens=tokens,
        total_cost=from_nanos(nanos),
        project_memories=memory_store.count_live(db, now),
        session_memories=db.execute("SELECT count(*) FROM session_memories").fetchone()[0],
        tasks=tasks,
        open_tasks=open_tasks,
        avg_messages_per_session=messages / sessions if sessions else 0.0,
        avg_tokens_per_session=tokens / sessions if sessions else 0.0,
        avg_session_seconds=avg_seconds,
        sessions_by_tool=by_tool,
    )


@handles("maintenance.cleanup_orphans")
def cleanup_orphans(caller: Caller, p: CleanupOrphans) -> CleanupResult:
    """Delete ended sessions older than ``older_than`` seconds that hold nothing at all."""
    store = caller.daemon.store
    orphans = task_store.orphan_sessions(store.db, store.now() - p.older_than)
    if not p.dry_run and orphans:
        search_store.unindex_sessions(store.db, orphans)
        task_store.delete_sessions(store.db, orphans)
    return CleanupResult(p.dry_run, orphans)
