"""memories.search_similar against a real daemon: embeddings on project and session memories,
the same top-k from the pure-Python scan and from sqlite-vec, typed errors for bad vectors,
and expired or deleted memories never found."""

from __future__ import annotations

import array
import asyncio
import json
import math
import os
import random
import sys

import pytest

from omnid_client import AsyncClient, Client, Invalid, NotFound, TooLarge, Unsupported
from omnid_client.protocol import SimilarMemories
from tests.helpers import count, omnid_error, omnid_json, run_omnid, start, wait_for


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def ids(found: SimilarMemories) -> list[str]:
    return [h.memory_id for h in found.hits]


def vec_loads(client: Client, where: dict) -> str | None:
    """None if this daemon can run the sqlite-vec engine (the project must hold vectors), else why not."""
    try:
        client.search_similar([1.0], engine="sqlite-vec", k=1, **where)
    except Unsupported as e:
        return str(e)
    except Invalid:
        pass  # the dimension is wrong on purpose: the engine loaded, the query did not fit
    return None


def vec_or_skip(client: Client, **where) -> None:
    why = vec_loads(client, where)
    if why is not None:
        pytest.skip(f"sqlite-vec cannot load here: {why}")


@pytest.fixture
def stocked(client: Client, tmp_path):
    """A project with 150 memories and 30 session notes of 16 dimensions, three of them the
    same vector (a tie), and one memory with no embedding."""
    rnd = random.Random(7)
    s = start(client, tmp_path)
    where = {"project_id": s.project_id}
    vectors = {}
    for i in range(150):
        v = [rnd.gauss(0, 1) for _ in range(16)]
        vectors[client.put_memory(f"m{i:03d}", {"i": i}, embedding=v, **where).memory_id] = v
    tie = [rnd.gauss(0, 1) for _ in range(16)]
    for key in ("tie-a", "tie-b", "tie-c"):
        vectors[client.put_memory(key, key, embedding=tie, **where).memory_id] = tie
    for i in range(30):
        v = [rnd.gauss(0, 1) for _ in range(16)]
        vectors[client.add_session_memory(s.session_id, f"note {i}", embedding=v).memory_id] = v
    client.put_memory("plain", "no vector", **where)
    return s, where, vectors, tie


def expected(vectors: dict[str, list[float]], query: list[float], k: int) -> list[str]:
    q = unit(query)
    scored = [(round(sum(a * b for a, b in zip(unit(v), q, strict=True)), 6), ref) for ref, v in vectors.items()]
    return [ref for _, ref in sorted(scored, key=lambda t: (-t[0], t[1]))[:k]]


def test_both_engines_find_the_same_nearest_memories(client, stocked):
    s, where, vectors, tie = stocked
    vec_or_skip(client, **where)
    rnd = random.Random(11)
    for _ in range(5):
        query = [rnd.gauss(0, 1) for _ in range(16)]
        python = client.search_similar(query, k=10, engine="python", **where)
        vec = client.search_similar(query, k=10, engine="sqlite-vec", **where)
        assert (python.engine, vec.engine) == ("python", "sqlite-vec")
        assert ids(python) == ids(vec) == expected(vectors, query, 10)
        assert [h.score for h in python.hits] == pytest.approx([h.score for h in vec.hits], abs=2e-6)
        assert python.scanned == vec.scanned == 183 and python.dim == vec.dim == 16
    # A tie: equal scores come in memory id order, from either engine.
    for engine in ("python", "sqlite-vec"):
        found = client.search_similar(tie, k=3, engine=engine, **where)
        assert ids(found) == sorted(ids(found)) and found.hits[0].score == pytest.approx(1.0, abs=1e-6)
        assert all(h.memory is not None and h.memory.key.startswith("tie-") for h in found.hits)


def test_hits_carry_their_memories_and_filters_apply(client, stocked):
    s, where, vectors, tie = stocked
    found = client.search_similar(tie, k=200, engine="python", **where)
    assert len(found.hits) == 183
    scores = [h.score for h in found.hits]
    assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] and scores[0] <= 1
    notes = [h for h in found.hits if h.kind == "session_memory"]
    assert len(notes) == 30 and all(h.session_memory.session_id == s.session_id for h in notes)
    only = client.search_similar(tie, k=200, kinds=["session_memory"], engine="python", **where)
    assert [h.memory_id for h in only.hits] == [h.memory_id for h in notes] and only.scanned == 30
    close = client.search_similar(tie, k=200, min_score=0.3, engine="python", **where)
    assert close.hits and all(h.score >= 0.3 for h in close.hits)
    assert ids(close) == [h.memory_id for h in found.hits if h.score >= 0.3]
    # Packed little-endian float32 is the same query; a search is no read of the memories.
    packed = array.array("f", tie).tobytes()
    assert ids(client.search_similar(packed, k=5, engine="python", **where)) == ids(found)[:5]
    assert client.get_memory("tie-a", **where).accessed_count == 1


def test_expired_deleted_and_re_put_memories_are_never_found(client, tmp_path, home):
    s = start(client, tmp_path)
    where = {"project_id": s.project_id}
    target = [1.0, 0.0, 0.0]
    client.put_memory("soon-gone", "x", embedding=target, ttl=0.3, **where)
    client.put_memory("deleted", "x", embedding=target, **where)
    client.put_memory("re-put", "x", embedding=target, **where)
    client.put_memory("stays", "x", embedding=[0.9, 0.1, 0.0], **where)
    note = client.add_session_memory(s.session_id, "a note", embedding=[0.8, 0.2, 0.0])
    client.delete_memory("deleted", **where)
    client.put_memory("re-put", "new value, no vector", **where)  # the old vector described the old value

    def keys(engine: str = "python") -> list[str]:
        found = client.search_similar(target, k=10, engine=engine, **where)
        return [h.memory.key if h.memory else h.session_memory.memory_id for h in found.hits]

    wait_for(lambda: keys() == ["stays", note.memory_id], what="the memory to expire")
    assert keys("python" if vec_loads(client, where) else "sqlite-vec") == ["stays", note.memory_id]
    # The expired one's vector stays stored until the purge (every 30 s at most): it is never found.
    assert count(home, "memory_vectors") in (2, 3)
    # Each vector has its compact copy, and only while it is stored.
    assert count(home, "memory_vector_codes") == count(home, "memory_vectors")
    client.end(s.session_id)
    client.delete_session(s.session_id)
    assert keys() == ["stays"] and count(home, "memory_vectors", "ref_id = ?", note.memory_id) == 0
    assert count(home, "memory_vector_codes", "ref_id = ?", note.memory_id) == 0
    assert count(home, "memory_vector_codes") == count(home, "memory_vectors")


def test_the_first_vector_fixes_the_projects_dimension(client, tmp_path):
    s = start(client, tmp_path)
    where = {"project_id": s.project_id}
    assert client.search_similar([1.0, 2.0], **where) == SimilarMemories([], None, "none", 0)
    client.put_memory("a", 1, embedding=[1.0, 2.0, 3.0], **where)
    with pytest.raises(Invalid) as put:
        client.put_memory("b", 1, embedding=[1.0, 2.0], **where)
    assert "2 dimensions" in str(put.value) and "3 dimensions" in str(put.value)
    assert put.value.details["dim"] == 2 and put.value.details["project_dim"] == 3
    with pytest.raises(Invalid) as note:
        client.add_session_memory(s.session_id, "n", embedding=[1.0] * 4)
    assert "4 dimensions" in str(note.value) and "3 dimensions" in str(note.value)
    with pytest.raises(Invalid) as search:
        client.search_similar([1.0] * 5, **where)
    assert "5 dimensions" in str(search.value) and "3 dimensions" in str(search.value)
    with pytest.raises(NotFound):  # nothing of the refused puts was kept
        client.get_memory("b", **where)
    assert client.search_similar([3.0, 2.0, 1.0], **where).dim == 3


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "vector, error, words",
    [
        ([1.0, NAN, 2.0], Invalid, "[1] is nan"),
        ([INF, 1.0, 2.0], Invalid, "[0] is inf"),
        ([1.0, -INF, 2.0], Invalid, "is -inf"),
        ([1.0, 1e39, 2.0], Invalid, "finite float32"),
        ([0.0, 0.0, 0.0], Invalid, "no direction"),
        ([], Invalid, "a list of 1-4096 items"),
        ([1.0] * 4097, TooLarge, "a list of 1-4096 items"),
        (b"\x00\x00\x80?\x00", Invalid, "4 bytes a dimension"),
        (b"\x00" * (4 * 4097), TooLarge, "or 4-16384 bytes"),
    ],
    ids=["nan", "inf", "-inf", "past-float32", "zero", "empty", "oversized", "ragged-bytes", "oversized-bytes"],
)
def test_bad_vectors_get_typed_errors(client, tmp_path, vector, error, words):
    s = start(client, tmp_path)
    where = {"project_id": s.project_id}
    client.put_memory("good", 1, embedding=[1.0, 2.0, 3.0], **where)
    for attempt in (
        lambda: client.put_memory("bad", 1, embedding=vector, **where),
        lambda: client.add_session_memory(s.session_id, "bad", embedding=vector),
        lambda: client.search_similar(vector, **where),
    ):
        with pytest.raises(error) as e:
            attempt()
        assert words in str(e.value)
    assert ids(client.search_similar([1.0, 2.0, 3.0], **where))  # the daemon goes on
    assert [m.key for m in client.list_memories(**where)] == ["good"]


@pytest.mark.parametrize("params, words", [
    ({"k": 0}, "from 1 to 1000"), ({"k": 1001}, "from 1 to 1000"), ({"min_score": 1.5}, "from -1 to 1"),
    ({"kinds": []}, "kinds is empty"),
    ({"engine": "faiss"}, "engine"),
])
def test_bad_search_parameters_are_invalid(client, tmp_path, params, words):
    s = start(client, tmp_path)
    client.put_memory("good", 1, embedding=[1.0, 2.0], project_id=s.project_id)
    with pytest.raises(Invalid) as e:
        client.search_similar([1.0, 2.0], project_id=s.project_id, **params)
    assert words in str(e.value)


def test_the_async_client_and_the_cli_give_the_same_hits(daemon, client, stocked, tmp_path):
    s, where, vectors, tie = stocked
    query = [0.5] * 16

    async def main() -> SimilarMemories:
        async with AsyncClient(autostart=False) as c:
            return await c.search_similar(query, k=7, engine="python", **where)

    found = client.search_similar(query, k=7, engine="python", **where)
    assert asyncio.run(main()) == found
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"embedding": query}))
    cli = omnid_json("memories", "similar", str(path), "-k", "7", "--engine", "python", "--project", s.project_id)
    assert [h["memory_id"] for h in cli["hits"]] == ids(found)
    with path.open() as stdin:
        piped = run_omnid("memories", "similar", "-k", "7", "--engine", "python", "--project", s.project_id, "--json",
                          stdin=stdin)
    assert piped.returncode == 0 and json.loads(piped.stdout) == cli
    link = tmp_path / "link.json"
    link.symlink_to(path)
    refused = run_omnid("memories", "similar", str(link), "--project", s.project_id)
    assert refused.returncode == 2 and "symlink" in refused.stderr
    path.write_text("[1, 2, \"x\"]")
    refused = run_omnid("memories", "similar", str(path), "--project", s.project_id)
    assert refused.returncode == 2 and "no vector" in refused.stderr
    path.write_text(json.dumps([1.0] * 3))
    assert "3 dimensions" in omnid_error("memories", "similar", str(path), "--project", s.project_id)["message"]
    path.write_text(json.dumps([1.0] * 16))
    put = omnid_json("memories", "put", "from-cli", "v", "--embedding", str(path), "--project", s.project_id)
    assert put["key"] == "from-cli"
    assert client.search_similar([1.0] * 16, k=1, engine="python", **where).hits[0].memory.key == "from-cli"


def test_the_engine_follows_the_setting_and_falls_back_when_sqlite_vec_cannot_load(home, tmp_path, start_daemon):
    """With the extra unloadable (a planted sqlite_vec package that fails to import), "auto"
    searches run in Python, and a search that must use sqlite-vec is Unsupported, saying why."""
    planted = tmp_path / "planted" / "sqlite_vec"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise ImportError('planted: no sqlite-vec here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(planted.parent), *sys.path])}
    d = start_daemon(env=env)
    with d.client() as client:
        s = start(client, tmp_path)
        where = {"project_id": s.project_id}
        client.put_memory("a", 1, embedding=[1.0, 0.0], **where)
        assert client.search_similar([1.0, 0.1], **where).engine == "python"
        with pytest.raises(Unsupported) as e:
            client.search_similar([1.0, 0.1], engine="sqlite-vec", **where)
        assert "planted: no sqlite-vec here" in str(e.value)
        (home / "config.toml").write_text('vector_engine = "sqlite-vec"\n')
        wait_for(lambda: client.status().settings.vector_engine == "sqlite-vec", what="the new setting")
        with pytest.raises(Unsupported):
            client.search_similar([1.0, 0.1], **where)
        (home / "config.toml").write_text('vector_engine = "python"\n')
        wait_for(lambda: client.status().settings.vector_engine == "python", what="the new setting")
        assert ids(client.search_similar([1.0, 0.1], **where)) == [client.get_memory("a", **where).memory_id]
    d.stop()
    # Without the planted package, "auto" uses sqlite-vec wherever the extra loads.
    (home / "config.toml").unlink()
    d = start_daemon()
    with d.client() as client:
        why = vec_loads(client, where)
        assert client.search_similar([1.0, 0.1], **where).engine == ("sqlite-vec" if why is None else "python")
