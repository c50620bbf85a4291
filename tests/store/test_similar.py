"""The similarity search thread on a real database file: a search abandoned when the daemon
stops, and the sqlite-vec engine that cannot load saying why."""

from __future__ import annotations

import random
import sys
import time

import pytest

from omnid.store import vectors as vector_store
from omnid.store.similar import Query, SimilarSearch, Stopped, python_top_k
from omnid_client.errors import Unsupported

PROJECT = "prj_000000000001"


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
