"""Benchmarks of what agents ask for: context.pack on a big session and project, compaction
of a session with a million context events, and memories.search_similar over 100k vectors. Run alone with
``python bench/run.py --only agent``; ``make bench`` runs them with the rest."""

from __future__ import annotations

import array
import math
import os
import sqlite3
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, Callable


def _timed(fn: Callable[[], Any], runs: int) -> dict:
    fn()  # warm the caches once
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": statistics.median(times), "max_ms": max(times), "runs": runs}


def fill_rolled_context(db: sqlite3.Connection, session_id: str, count: int, *, distinct: int = 2000) -> None:
    """``count`` context events of one session, as the daemon would hold them: the rows, their
    per-subject rollup and the session's counter."""
    now = time.time() - 3600
    kinds = ("file_access", "file_access", "file_access", "search", "file_change", "decision")
    rows = (
        (session_id, kinds[i % len(kinds)], f"src/module_{i % distinct}.py", (i % 10) / 10, now + i * 1e-3)
        for i in range(count)
    )
    db.executemany(
        "INSERT INTO context_events (session_id, kind, subject, importance, created_at) VALUES (?,?,?,?,?)", rows
    )
    db.execute(
        "INSERT INTO context_rollup (session_id, kind, subject, events, bytes, first_at, last_at, max_importance) "
        "SELECT session_id, kind, subject, count(*), sum(length(subject)), min(created_at), max(created_at), "
        "max(coalesce(importance, 0.5)) FROM context_events WHERE session_id = ? AND kind != 'decision' "
        "GROUP BY kind, subject",
        (session_id,),
    )
    db.execute(
        "UPDATE sessions SET context_event_count = context_event_count + ? WHERE session_id = ?", (count, session_id)
    )


def fill_memories(db: sqlite3.Connection, project_id: str, count: int) -> None:
    """``count`` project memories, a tenth of them expired, with varied read counts."""
    now = time.time()
    rows = (
        (f"mem_{i:012x}", project_id, f"note/{i}", f'"remember thing {i} about module {i % 97}"', "{}", 1,
         now - 86400 + i, now - 86400 + i, (now - 10) if i % 10 == 0 else None, (i * 7919) % 1000,
         (now - 3600 + i) if i % 3 else None)
        for i in range(count)
    )
    db.executemany(
        "INSERT INTO memories (memory_id, project_id, key, value, metadata, version, created_at, updated_at, "
        "expires_at, accessed_count, last_accessed) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )


def pack_at_scale(
    work: Path, omnid_daemon: Callable[[Path], Any], events: int = 100_000, memories: int = 10_000
) -> dict:
    """context.pack (2000 tokens) on a session holding ``events`` context events in a
    project holding ``memories`` memories, timed from the client."""
    from omnid_client import Client
    from omnid_client.protocol import NewMessage

    home = work / "agent-pack"
    project = work / "agent-project"
    home.mkdir()
    project.mkdir()
    with omnid_daemon(home), Client(home / "run" / "omnid.sock", autostart=False) as client:
        s = client.get_or_create("bench-pack", workspace=str(project), dedup=False,
                                 metadata={"title": "Bench", "goal": "Pack fast", "summary": "Many events"}).session
        client.add_messages(s.session_id, [NewMessage("user", f"message {n} " * 20) for n in range(50)])
        for n in range(30):
            client.create_task(s.session_id, f"task {n}")
    db = sqlite3.connect(home / "omnid.db")
    with db:
        fill_rolled_context(db, s.session_id, events)
        assert s.project_id is not None
        fill_memories(db, s.project_id, memories)
    db.close()
    with omnid_daemon(home), Client(home / "run" / "omnid.sock", autostart=False) as client:
        result = _timed(lambda: client.pack_context(s.session_id, budget_tokens=2000), 50)
        pack = client.pack_context(s.session_id, budget_tokens=2000)
    return {"events": events, "memories": memories, "tokens": pack.tokens, **result}


def compaction_at_scale(work: Path, events: int = 1_000_000, keep: int = 10_000) -> dict:
    """Fold a session of ``events`` context events down to ``keep`` rows of each kind, in one
    transaction on the store itself; then read its view and check it did not change."""
    from omnid.store import Store, context as context_store
    from omnid_client.protocol import GetContext

    path = work / "agent-compact.db"
    store = Store(path)
    sid = str(uuid.uuid4())
    now = time.time()
    store.db.execute(
        "INSERT INTO sessions (session_id, tool_id, session_type, started_at, last_activity) VALUES (?,?,?,?,?)",
        (sid, "bench", "default", now, now),
    )
    t = time.perf_counter()
    with store.write() as db:
        fill_rolled_context(db, sid, events, distinct=5000)
    fill_s = time.perf_counter() - t
    view = GetContext(sid)
    before = context_store.materialize(store.db, view)
    read_before = _timed(lambda: context_store.materialize(store.db, view), 5)
    t = time.perf_counter()
    with store.write() as db:
        folded = context_store.fold(db, sid, keep=keep, before=None)
    fold_s = time.perf_counter() - t
    after = context_store.materialize(store.db, view)
    read_after = _timed(lambda: context_store.materialize(store.db, view), 5)
    rows = store.db.execute("SELECT count(*) FROM context_events WHERE session_id = ?", (sid,)).fetchone()[0]
    store.close()
    size = os.path.getsize(path)
    same = before.files == after.files and before.changes == after.changes and before.searches == after.searches
    same = same and before.size.events == after.size.events and before.size.bytes == after.size.bytes
    return {
        "events": events, "keep": keep, "folded": folded, "rows_left": rows, "fill_s": fill_s, "fold_s": fold_s,
        "view_ms_before": read_before["p50_ms"], "view_ms_after": read_after["p50_ms"], "view_unchanged": same,
        "db_mb": size / 2**20,
    }


def fill_vectors(db: sqlite3.Connection, project_id: str, count: int, dim: int) -> None:
    """Unit float32 vectors of random directions for the first ``count`` memories of
    ``fill_memories`` (the tenth of them that expired too), stored as memory.put stores them."""
    from omnid.store.vectors import attach

    def unit(raw: bytes) -> array.array:
        v = array.array("b", raw)
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return array.array("f", [x / norm for x in v])

    expiry = dict(db.execute("SELECT memory_id, expires_at FROM memories WHERE project_id = ?", (project_id,)))
    for i in range(count):
        ref_id = f"mem_{i:012x}"
        attach(db, ref_id, "memory", project_id, unit(os.urandom(dim)), expires_at=expiry[ref_id])


def similar_at_scale(
    work: Path, omnid_daemon: Callable[[Path], Any], memories: int = 100_000, dim: int = 384, k: int = 10
) -> dict:
    """memories.search_similar (k nearest of ``memories`` vectors of ``dim`` dimensions, a
    tenth expired), timed from the client: with sqlite-vec, and with the pure-Python scan."""
    from omnid_client import Client, Unsupported

    home = work / "agent-similar"
    project = work / "agent-similar-project"
    home.mkdir()
    project.mkdir()
    with omnid_daemon(home), Client(home / "run" / "omnid.sock", autostart=False) as client:
        project_id = client.get_or_create("bench-similar", workspace=str(project), dedup=False).session.project_id
    assert project_id is not None
    db = sqlite3.connect(home / "omnid.db")
    t = time.perf_counter()
    with db:
        fill_memories(db, project_id, memories)
        fill_vectors(db, project_id, memories, dim)
    fill_s = time.perf_counter() - t
    db.close()
    queries = [list(array.array("b", os.urandom(dim))) for _ in range(8)]
    result: dict[str, Any] = {"memories": memories, "dim": dim, "k": k, "fill_s": fill_s}
    with omnid_daemon(home), Client(home / "run" / "omnid.sock", autostart=False, timeout=120) as client:
        turn = iter(range(10**9))

        def search(engine: str, vector: list[int] | None = None) -> Any:
            vector = vector or queries[next(turn) % len(queries)]
            return client.search_similar(vector, k=k, project_id=project_id, engine=engine)

        python_top = search("python", queries[0])
        result["scanned"] = python_top.scanned
        try:
            result["vec"] = _timed(lambda: search("sqlite-vec"), 20)
            vec_top = search("sqlite-vec", queries[0])
            result["vec"]["same_top_k"] = [h.memory_id for h in vec_top.hits] == [h.memory_id for h in python_top.hits]
        except Unsupported as e:
            result["vec"] = {"unavailable": str(e)}
        result["python"] = _timed(lambda: search("python"), 3)
    # The floors under the scans: SQLite reading every float32 vector once (what a full exact
    # scan reads), or every int8 copy (what sqlite-vec's scan reads), nothing computed.
    db = sqlite3.connect(f"file:{home / 'omnid.db'}?mode=ro", uri=True)
    result["read_floor"] = _timed(lambda: db.execute("SELECT max(length(vector)) FROM memory_vectors").fetchone(), 10)
    result["read_floor_codes"] = _timed(
        lambda: db.execute("SELECT max(length(code)) FROM memory_vector_codes").fetchone(), 10
    )
    db.close()
    return result


def run(work: Path, omnid_daemon: Callable[[Path], Any], *, quick: bool = False) -> dict:
    return {
        "pack": pack_at_scale(work, omnid_daemon),
        "compaction": compaction_at_scale(work, 200_000 if quick else 1_000_000),
        "similar": similar_at_scale(work, omnid_daemon, 20_000 if quick else 100_000),
    }


def targets(r: dict) -> list[tuple[str, float, str, float]]:
    a = r["agent"]
    found = [
        ("context.pack p50 on 100k events and 10k memories (ms)", a["pack"]["p50_ms"], "<=", 20),
        ("context view unchanged by compaction (1 = yes)", float(a["compaction"]["view_unchanged"]), ">=", 1),
    ]
    sim = a["similar"]
    if "p50_ms" in sim["vec"]:
        found.append((
            f"search_similar p50, sqlite-vec, k={sim['k']} of {sim['memories']:,} x {sim['dim']} (ms)",
            sim["vec"]["p50_ms"], "<=", 50,
        ))
        found.append(("sqlite-vec top-k same as Python's (1 = yes)", float(sim["vec"]["same_top_k"]), ">=", 1))
    return found


def report(r: dict) -> None:
    p, c = r["agent"]["pack"], r["agent"]["compaction"]
    print(
        f"agent: context.pack (2000 tokens, {p['tokens']} packed) on {p['events']:,} events and {p['memories']:,} "
        f"memories: p50 {p['p50_ms']:.2f} ms, max {p['max_ms']:.2f} ms over {p['runs']} calls"
    )
    print(
        f"agent: compaction of {c['events']:,} events to {c['keep']:,} per kind: folded {c['folded']:,} in "
        f"{c['fold_s']:.2f} s ({c['rows_left']:,} rows left); view {c['view_ms_before']:.1f} ms before, "
        f"{c['view_ms_after']:.1f} ms after, unchanged: {c['view_unchanged']}"
    )
    sim = r["agent"]["similar"]
    vec = sim["vec"]
    print(
        f"agent: search_similar k={sim['k']} of {sim['memories']:,} vectors x {sim['dim']} ({sim['scanned']:,} live): "
        + (f"sqlite-vec p50 {vec['p50_ms']:.1f} ms (max {vec['max_ms']:.1f}, same top-k as Python: {vec['same_top_k']})"
           if "p50_ms" in vec else f"sqlite-vec unavailable ({vec['unavailable']})")
        + f"; pure Python p50 {sim['python']['p50_ms']:.0f} ms; reading the vectors alone p50 "
        f"{sim['read_floor']['p50_ms']:.1f} ms, their int8 copies {sim['read_floor_codes']['p50_ms']:.1f} ms"
    )
