"""Daemon methods: status, reap, shutdown, stats, metrics, and ids completed from a prefix."""

from __future__ import annotations

from omnid_client.protocol import (
    DaemonMetrics,
    DaemonStatus,
    Empty,
    IdMatches,
    Reap,
    ReapResult,
    ResolveIds,
    ServiceStats,
)

from ..store import memories as memory_store
from ..store.codec import from_nanos
from ..store.prefix import ids_with_prefix
from ._context import Caller, Context
from ._dispatch import handles


@handles("daemon.status")
def status(ctx: Context, caller: Caller, _: Empty) -> DaemonStatus:
    return ctx.status()


@handles("daemon.reap")
def reap(ctx: Context, caller: Caller, p: Reap) -> ReapResult:
    return ctx.reaper.sweep(trigger="manual", dry_run=p.dry_run)


@handles("daemon.metrics")
def metrics(ctx: Context, caller: Caller, _: Empty) -> DaemonMetrics:
    return ctx.metrics.snapshot()


@handles("daemon.shutdown")
def shutdown(ctx: Context, caller: Caller, _: Empty) -> Empty:
    ctx.stop(f"shutdown requested by pid {caller.pid}")
    return Empty()


@handles("daemon.stats")
def stats(ctx: Context, caller: Caller, _: Empty) -> ServiceStats:
    store = ctx.store
    db = store.db
    now = store.now()
    sessions, live, messages, tokens, nanos, avg_seconds = db.execute(
        "SELECT count(*), coalesce(sum(ended_at IS NULL), 0), coalesce(sum(message_count), 0), "
        "coalesce(sum(total_tokens), 0), coalesce(sum(total_cost_nanos), 0), "
        "avg(CASE WHEN ended_at IS NOT NULL THEN ended_at - started_at END) FROM sessions"
    ).fetchone()
    tasks, open_tasks = db.execute("SELECT count(*), coalesce(sum(status = 'open'), 0) FROM tasks").fetchone()
    by_tool = dict(db.execute("SELECT tool_id, count(*) FROM sessions GROUP BY tool_id ORDER BY 2 DESC LIMIT 100"))
    # total(), not sum(): counters come from callers' metadata, and must not overflow into an error.
    counters = {
        key: int(value)
        for key, value in db.execute(
            "SELECT c.key, total(c.value) FROM sessions, json_each(sessions.metadata, '$.counters') AS c "
            "WHERE instr(sessions.metadata, '\"counters\"') AND json_type(sessions.metadata, '$.counters') = 'object' "
            "AND c.type = 'integer' GROUP BY c.key ORDER BY c.key LIMIT 100"
        )
    }
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
        counters=counters,
    )


@handles("ids.resolve")
def resolve_ids(ctx: Context, caller: Caller, p: ResolveIds) -> IdMatches:
    ids, more = ids_with_prefix(ctx.store.db, p.kind, p.prefix, p.limit)
    return IdMatches(ids, more)
