"""The similarity search thread on a real database file: a search abandoned when the daemon
stops, the sqlite-vec engine that cannot load saying why, and its compact int8 scan ranking
exactly as the full float32 scan does."""

from __future__ import annotations

import array
import math
import random
import sqlite3
import sys
import time

import pytest

from omnid.store import similar, vectors as vector_store
from omnid.store.migrations import MIGRATIONS
from omnid.store.similar import Query, SimilarSearch, Stopped, VecUnavailable, python_top_k
from omnid_client.errors import Unsupported

PROJECT = "prj_000000000001"
LATEST_WITHOUT_CODES = next(
    n for n, steps in enumerate(MIGRATIONS) if any("CREATE TABLE memory_vector_codes" in str(s) for s in steps)
)
"""The last schema before memory_vector_codes."""


def fill(store, count: int, dim: int = 8) -> None:
    rnd = random.Random(3)
    with store.write() as db:
        db.execute("INSERT INTO projects (project_id, root, name, created_at, last_activity) VALUES (?,?,?,1,1)",
                   (PROJECT, "/p", "p"))
        for i in range(count):
            unit = vector_store.unit_vector([rnd.gauss(0, 1) for _ in range(dim)])
            vector_store.attach(db, f"mem_{i:012x}", "memory", PROJECT, unit)


def query(engine: str, k: int = 5, dim: int = 8) -> Query:
    return Query(vector_store.unit_vector([1.0] * dim), PROJECT, ("memory",), k, None, time.time(), dim, engine)


def test_a_python_scan_stops_when_the_daemon_does(store):
    fill(store, 10_000)
    rows = store.db.execute("SELECT ref_id, kind, vector FROM memory_vectors")
    with pytest.raises(Stopped):
        python_top_k(rows, query("python"), lambda: True)
    rows = store.db.execute("SELECT ref_id, kind, vector FROM memory_vectors")
    best, scanned = python_top_k(rows, query("python"))
    assert scanned == 10_000 and len(best) == 5 and [b[0] for b in best] == sorted((b[0] for b in best), reverse=True)


def test_the_search_thread_answers_then_closes(store):
    fill(store, 50)
    search = SimilarSearch(store.path, lambda: "python")
    try:
        assert search.plan("auto") == ("python", False)
        found = search.submit(query("python"), False).result(timeout=30)
        assert found.engine == "python" and found.scanned == 50 and len(found.hits) == 0  # no memory rows
    finally:
        search.close()
    search.close()  # twice is harmless


def test_sqlite_vec_that_cannot_load_is_unsupported_unless_auto(store, monkeypatch, tmp_path):
    fill(store, 10)
    planted = tmp_path / "sqlite_vec"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise ImportError('planted')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sqlite_vec", raising=False)
    search = SimilarSearch(store.path)
    try:
        with pytest.raises(Unsupported, match="planted"):
            search.submit(query("sqlite-vec"), False).result(timeout=30)
        assert search.submit(query("sqlite-vec"), True).result(timeout=30).engine == "python"
        assert search.plan("auto") == ("python", False)
        with pytest.raises(Unsupported, match="planted"):
            search.plan("sqlite-vec")
    finally:
        search.close()


def vec_connection_or_skip(search: SimilarSearch):
    try:
        return search._connection("sqlite-vec")
    except VecUnavailable as e:
        pytest.skip(f"sqlite-vec cannot load here: {e}")


def test_the_compact_scan_returns_exactly_the_full_scans_top_k(store, monkeypatch):
    """Clusters, near-duplicates and exact duplicates (ties wider than the int8 bounds can
    split), expired vectors and both kinds: for every query and k, the int8 scan with its
    bounds keeps what the full float32 scan ranks first, in its order, with its scores;
    each of its paths runs: the first rows fetched are enough, or a second scan fetches all that
the bounds cannot rule out, or those are too many and every vector is scored."""
    rnd = random.Random(11)
    dim = 24
    centres = [[rnd.gauss(0, 1) for _ in range(dim)] for _ in range(4)]
    with store.write() as db:
        db.execute("INSERT INTO projects (project_id, root, name, created_at, last_activity) VALUES (?,?,?,1,1)",
                   (PROJECT, "/p", "p"))
        for i in range(1500):
            centre = centres[i % 4]
            if i % 4 == 0:
                v = [round(x, 1) for x in centre]  # many identical vectors: ties
            elif i % 3:
                v = [x + rnd.gauss(0, 0.05 if i % 2 else 0.4) for x in centre]
            else:
                v = [rnd.gauss(0, 1) for _ in range(dim)]
            kind = "session_memory" if i % 5 == 0 else "memory"
            vector_store.attach(db, f"mem_{i:012x}", kind, PROJECT, vector_store.unit_vector(v),
                                expires_at=1.0 if i % 13 == 0 else None)
    monkeypatch.setattr(similar, "CANDIDATES", 64)
    monkeypatch.setattr(similar, "RESCORE_MOST", 260)
    search = SimilarSearch(store.path)
    decided = []
    try:
        db = vec_connection_or_skip(search)
        for trial in range(48):
            centre = centres[trial // 4 % 4]
            v = [round(x, 1) for x in centre] if trial % 6 == 0 else [x + rnd.gauss(0, 0.3) for x in centre]
            q = Query(vector_store.unit_vector(v if trial % 5 else [rnd.gauss(0, 1) for _ in range(dim)]),
                      PROJECT, ("memory", "session_memory"), (1, 3, 10, 40)[trial % 4],
                      (None, 0.5)[trial % 2], time.time(), dim, "sqlite-vec")
            db.execute("BEGIN")
            scans = []
            db.set_trace_callback(lambda sql: scans.append(sql) if "FROM memory_vector_codes" in sql else None)
            try:
                ids = similar._candidates(db, q)
                db.set_trace_callback(None)
                compact = similar._exact_top_k(db, q, ids)
                full = similar._exact_top_k(db, q, None)
            finally:
                db.rollback()
            decided.append("all" if ids is None else "first" if len(scans) == 1 else "second")
            assert compact == full, trial
    finally:
        search.close()
    assert set(decided) == {"first", "second", "all"}, decided


def test_the_compact_copy_bounds_its_vector(store):
    rnd = random.Random(5)
    for dim in (1, 3, 384, 4096):
        v = vector_store.unit_vector([rnd.gauss(0, 1) for _ in range(dim)])
        code = vector_store.encode(v)
        c = array.array("b", code.code)
        assert len(c) == dim and max(map(abs, c)) == vector_store.CODE_MAX and code.norm2 == sum(x * x for x in c)
        assert math.dist(v, [code.scale * x for x in c]) <= code.err < 0.02


def test_migrating_a_database_with_vectors_encodes_every_one_and_keeps_them(tmp_path):
    """The compact copies are derived from the float32 vectors already stored (a v9 file),
    which stay byte for byte as they were."""
    from omnid.store import Store
    from tests.store.test_store import build_database

    db_path = tmp_path / "omnid.db"
    build_database(db_path, LATEST_WITHOUT_CODES)
    rnd = random.Random(2)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("INSERT INTO projects (project_id, root, name, created_at, last_activity) VALUES (?,?,?,1,1)",
               (PROJECT, "/p", "p"))
    stored = {}
    for i in range(40):
        blob = vector_store.to_blob(vector_store.unit_vector([rnd.gauss(0, 1) for _ in range(12)]))
        stored[f"mem_{i:012x}"] = blob
        db.execute("INSERT INTO memory_vectors (ref_id, kind, project_id, expires_at, vector) VALUES (?,?,?,?,?)",
                   (f"mem_{i:012x}", "memory" if i % 2 else "session_memory", PROJECT, 5.0 if i % 3 else None, blob))
    db.close()
    store = Store(db_path)
    try:
        assert dict(store.db.execute("SELECT ref_id, vector FROM memory_vectors")) == stored
        codes = store.db.execute(
            "SELECT c.ref_id, c.kind = v.kind, c.expires_at IS v.expires_at, c.scale, c.norm2, c.err, c.code "
            "FROM memory_vector_codes c JOIN memory_vectors v USING (ref_id)"
        ).fetchall()
        assert len(codes) == len(stored)
        for ref_id, same_kind, same_expiry, *code in codes:
            assert same_kind and same_expiry
            expected = vector_store.encode(vector_store.from_blob(stored[ref_id]))
            assert code == [expected.scale, expected.norm2, expected.err, expected.code]
    finally:
        store.close()
