"""Big databases for the scale figures, built fast: the real store's migrations make the
schema, then rows go in by direct SQL in a few large transactions.

``search_at_scale`` times search on a database of many messages and memories where
every query matches a lot (the words are drawn from a small vocabulary), through a real
daemon.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
import uuid
from pathlib import Path
from typing import Callable, ContextManager

WORDS = (
    "session daemon socket commit index search memory context message reply token process "
    "owner client write read query result table schema event worker thread buffer cache"
).split()
COMMON = ("session", "daemon context", "commit index", "memory search")
"""Queries that match a large share of all rows."""


def create_schema(path: Path) -> None:
    from omnid.store import Store

    Store(path).close()


def fill_search(path: Path, messages: int, memories: int, sessions: int = 1000) -> None:
    """``messages`` messages over ``sessions`` ended sessions and ``memories`` memories, all
    indexed, in one project; texts of 12 words from ``WORDS``."""
    rnd = random.Random(16)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    now = time.time() - 86400
    project = "p-bench"
    sids = [str(uuid.UUID(int=i + 1)) for i in range(sessions)]

    def text() -> str:
        return " ".join(rnd.choices(WORDS, k=12))

    db.execute("BEGIN")
    db.execute(
        "INSERT INTO projects (project_id, root, name, created_at, last_activity) VALUES (?,?,?,?,?)",
        (project, "/bench/project", "project", now, now),
    )
    db.executemany(
        "INSERT INTO sessions (session_id, tool_id, session_type, started_at, last_activity, ended_at, end_reason, "
        "project_id, message_count) VALUES (?, 'bench', 'default', ?, ?, ?, 'ended', ?, ?)",
        ((sid, now, now, now + 1, project, messages // sessions) for sid in sids),
    )
    db.execute("COMMIT")
    batch = 100_000
    for start in range(0, messages, batch):
        rows = [
            (i + 1, sids[i % sessions], i // sessions + 1, "assistant", text(), "text", now + i * 1e-3)
            for i in range(start, min(messages, start + batch))
        ]
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO messages (message_id, session_id, seq, role, content, message_type, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            rows,
        )
        db.executemany(
            "INSERT INTO search_index (body, kind, ref_id, session_id, project_id, created_at) "
            "VALUES (?, 'message', ?, ?, ?, ?)",
            ((r[4], str(r[0]), r[1], project, r[6]) for r in rows),
        )
        db.execute("COMMIT")
    for start in range(0, memories, batch):
        rows = [
            (f"m-{i}", project, f"key-{i}", text(), 1, now, now) for i in range(start, min(memories, start + batch))
        ]
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO memories (memory_id, project_id, key, value, version, created_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?)",
            rows,
        )
        db.executemany(
            "INSERT INTO search_index (body, kind, ref_id, session_id, project_id, created_at) "
            "VALUES (?, 'memory', ?, NULL, ?, ?)",
            ((f"{r[2]} {r[3]}", r[0], project, r[5]) for r in rows),
        )
        db.execute("COMMIT")
    with db:  # where each row is, as the store notes it (unindexing deletes through it)
        db.execute("INSERT INTO search_refs (kind, ref_id, row, session_id) "
                   "SELECT kind, ref_id, rowid, session_id FROM search_index")
    db.execute("INSERT INTO search_index (search_index) VALUES ('optimize')")
    db.close()


def fill_sessions(home: Path, count: int) -> None:
    """Put ``count`` ended sessions straight into a stopped daemon's database."""
    db = sqlite3.connect(home / "omnid.db")
    boot = "00000000-0000-0000-0000-000000000000"
    now = time.time() - 86400
    rows = (
        (str(uuid.UUID(int=i + 1)), f"tool-{i % 50}", "default", 1000 + i % 30000, i, boot, "/w", "{}",
         now + i * 1e-3, now + i * 1e-3, now + i * 1e-3 + 1, "ended")
        for i in range(count)
    )
    with db:
        db.executemany(
            "INSERT INTO sessions (session_id, tool_id, session_type, owner_pid, owner_start, boot_id, workspace, "
            "metadata, started_at, last_activity, ended_at, end_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    db.close()


def fill_context(home: Path, session_id: str, count: int) -> None:
    """Put ``count`` context events of one session straight into a stopped daemon's database."""
    db = sqlite3.connect(home / "omnid.db")
    now = time.time() - 3600
    kinds = ("file_access", "search", "file_change", "decision")
    rows = ((session_id, kinds[i % 4], f"src/module_{i % 997}.py", now + i * 1e-3) for i in range(count))
    with db:
        db.executemany("INSERT INTO context_events (session_id, kind, subject, created_at) VALUES (?,?,?,?)", rows)
        db.execute(  # the per-subject rollup the daemon keeps beside the rows
            "INSERT INTO context_rollup (session_id, kind, subject, events, bytes, first_at, last_at, max_importance) "
            "SELECT session_id, kind, subject, count(*), sum(length(subject)), min(created_at), max(created_at), 0.5 "
            "FROM context_events WHERE session_id = ? AND kind != 'decision' GROUP BY kind, subject",
            (session_id,),
        )
        db.execute(
            "UPDATE sessions SET context_event_count = context_event_count + ? WHERE session_id = ?",
            (count, session_id),
        )
    db.close()


def connect(homes: dict[str, Path]) -> dict:
    """A client of the daemon in each home."""
    from omnid_client import Client

    return {label: Client(home / "run" / "omnid.sock", autostart=False, timeout=60) for label, home in homes.items()}


def alternating(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ms of each call, called in turn ``rounds`` times, so load swings hit all alike."""
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[label].append((time.perf_counter() - t0) * 1000)
    return {label: statistics.median(t) for label, t in times.items()}


FRESH_SESSIONS = 100
FRESH_EVENTS = 1000
"""The fresh database of ``reads_at_scale``: enough to fill a page of sessions and the
context view's lists, so both sides answer the same amount."""


def reads_at_scale(
    work: Path, daemon: Callable[[Path], ContextManager[object]], sessions: int, events: int, rounds: int
) -> dict:
    """context.get of a session and sessions list (p50 ms, alternating rounds) on a fresh
    database (``FRESH_SESSIONS`` sessions, one of ``FRESH_EVENTS`` events) and on one of
    ``sessions`` sessions with a session of ``events`` events."""
    from omnid_client import Client

    homes = {"fresh": work / "reads-fresh", "full": work / "reads-full"}
    sizes = {"fresh": (FRESH_SESSIONS, FRESH_EVENTS), "full": (sessions, events)}
    sids = {}
    for label, home in homes.items():
        home.mkdir()
        with daemon(home), Client(home / "run" / "omnid.sock", autostart=False) as client:
            sids[label] = client.get_or_create("bench-reads", dedup=False).session.session_id
        fill_sessions(home, sizes[label][0])
        fill_context(home, sids[label], sizes[label][1])
    with daemon(homes["fresh"]), daemon(homes["full"]):
        clients = connect(homes)
        try:
            calls: dict[str, Callable[[], object]] = {}
            for label, client in clients.items():
                calls[f"context_get_{label}"] = lambda c=client, s=sids[label]: c.get_context(s)
                calls[f"sessions_list_{label}"] = lambda c=client: c.list_sessions()
            medians = alternating(calls, rounds)
        finally:
            for client in clients.values():
                client.close()
    return {
        "sessions": sessions, "events": events, **{f"{k}_ms": v for k, v in medians.items()},
        "context_get_ratio": medians["context_get_full"] / medians["context_get_fresh"],
        "sessions_list_ratio": medians["sessions_list_full"] / medians["sessions_list_fresh"],
    }


def search_at_scale(
    work: Path, daemon: Callable[[Path], ContextManager[object]], messages: int, memories: int, rounds: int
) -> dict:
    """Search p50 (ms, one client, a common query per call) on an empty database and on
    one of ``messages`` messages and ``memories`` memories, in alternating rounds."""

    homes = {"empty": work / "search-empty", "full": work / "search-full"}
    built = time.monotonic()
    for label, home in homes.items():
        home.mkdir()
        create_schema(home / "omnid.db")
        if label == "full":
            fill_search(home / "omnid.db", messages, memories)
    built = time.monotonic() - built
    with daemon(homes["empty"]), daemon(homes["full"]):
        clients = connect(homes)
        try:
            out: dict = {"messages": messages, "memories": memories, "build_s": built}
            for query in COMMON:
                medians = alternating(
                    {label: lambda c=client, q=query: c.search(q, limit=20) for label, client in clients.items()},
                    rounds,
                )
                out[query] = medians
        finally:
            for client in clients.values():
                client.close()
    out["empty_p50_ms"] = statistics.median(out[q]["empty"] for q in COMMON)
    out["full_p50_ms"] = statistics.median(out[q]["full"] for q in COMMON)
    return out
