"""Memory vectors through ``omnid export`` and ``omnid import``, with real daemons: they come
back bit for bit (and with them the same similarity hits), and a vector that does not fit
is refused with its line named."""

from __future__ import annotations

import array
import random

import msgspec

from omnid.store.vectors import from_blob, to_blob, unit_vector
from omnid_client.protocol import MemoryRecord, ProjectRecord, SessionMemoryRecord
from tests.helpers import count, db_rows, omnid_error, omnid_json, omnid_ok, start
from tests.offline.test_transfer import decode_all, other_home, write_jsonl  # noqa: F401 (a fixture)

VECTORS = "SELECT ref_id, kind, project_id, session_id, expires_at, vector FROM memory_vectors ORDER BY ref_id"


def test_vectors_make_the_round_trip_bit_for_bit(client, home, daemon, tmp_path, other_home):  # noqa: F811
    rnd = random.Random(19)
    s = start(client, tmp_path)
    where = {"project_id": s.project_id}
    for i in range(30):
        client.put_memory(f"m{i}", i, embedding=[rnd.uniform(-1, 1) for _ in range(24)], **where)
    client.put_memory("ttl", "x", embedding=[rnd.gauss(0, 1) for _ in range(24)], ttl=3600, **where)
    client.put_memory("plain", "no vector", **where)
    client.put_memory("m0", "re-put: a new vector", embedding=[0.5] * 24, **where)
    client.put_memory("m1", "re-put: no vector now", **where)
    client.add_session_memory(s.session_id, "a note", embedding=[rnd.gauss(0, 1) for _ in range(24)])
    client.add_session_memory(s.session_id, "a note without")
    client.end(s.session_id)
    query = [rnd.gauss(0, 1) for _ in range(24)]
    hits = {e: client.search_similar(query, k=40, engine=e, **where) for e in ("python", "sqlite-vec")}
    stored = db_rows(home / "omnid.db", VECTORS)
    assert len(stored) == 31

    first = tmp_path / "first.jsonl"
    omnid_ok("export", "-o", str(first))
    records = decode_all(first)
    carried = {r.memory_id: r.embedding for r in records if isinstance(r, (MemoryRecord, SessionMemoryRecord))}
    assert {ref: vector for ref, *_, vector in stored} == {ref: v for ref, v in carried.items() if v is not None}
    assert b'"embedding":null' not in first.read_bytes()  # left out, not null, when there is none

    assert daemon.stop() == 0
    second_daemon = other_home()
    omnid_json("import", str(first))
    second = tmp_path / "second.jsonl"
    omnid_ok("export", "-o", str(second))
    assert second.read_bytes() == first.read_bytes()
    assert db_rows(second_daemon.home / "omnid.db", VECTORS) == stored
    assert count(second_daemon.home, "memory_vector_codes") == len(stored)
    with second_daemon.client() as c2:
        for engine, found in hits.items():
            assert c2.search_similar(query, k=40, engine=engine, **where) == found


def test_an_imported_vector_is_checked_like_a_put_one(client, home, tmp_path):
    s = start(client, tmp_path)
    client.put_memory("fixes-dim", "x", embedding=[1.0, 0.0, 0.0], project_id=s.project_id)
    export = tmp_path / "e.jsonl"
    omnid_ok("export", "-o", str(export))
    project = next(r for r in decode_all(export) if isinstance(r, ProjectRecord))

    def memory(key: str, embedding: object) -> bytes:
        record = msgspec.json.decode(msgspec.json.encode(MemoryRecord(
            f"mem_{abs(hash(key)) % 16**12:012x}", project.project_id, key, "v", {}, 1, 1.0, 1.0, None, 0, None,
        )))
        return msgspec.json.encode({**record, "embedding": embedding}) + b"\n"

    bad = write_jsonl(tmp_path / "bad.jsonl", [project, memory("wrong-dim", [1.0, 2.0])])
    for args in (("import", str(bad)), ("import", str(bad), "--dry-run")):
        error = omnid_error(*args)
        assert error["code"] == "invalid" and "line 2" in error["message"], error
        assert "has 2 dimensions" in error["message"] and "vectors of 3 dimensions" in error["message"], error
    zero = write_jsonl(tmp_path / "zero.jsonl", [project, memory("zero", [0.0, 0.0, 0.0])])
    assert "no direction" in omnid_error("import", str(zero))["message"]
    assert count(home, "memories") == 1 and count(home, "memory_vectors") == 1

    # A unit vector is kept bit for bit, though normalising it again would change a bit; one
    # written by hand (not of unit length) is normalised, as a put would store it.
    unit = [0.12427743524312973, 0.5091949701309204, -0.8516311049461365]
    assert to_blob(unit_vector(to_blob(array.array("f", unit)))) != to_blob(array.array("f", unit))
    by_hand = write_jsonl(tmp_path / "hand.jsonl", [project, memory("by-hand", [0.0, 3.0, 4.0]), memory("unit", unit)])
    omnid_json("import", str(by_hand))

    def stored(key: str) -> list[float]:
        return list(from_blob(db_rows(home / "omnid.db", "SELECT vector FROM memory_vectors WHERE ref_id = "
                                      "(SELECT memory_id FROM memories WHERE key = ?)", key)[0][0]))

    assert stored("by-hand") == [0.0, 0.6000000238418579, 0.800000011920929]
    assert stored("unit") == unit
    top = client.search_similar([0.0, 0.6, 0.8], k=1, engine="python", project_id=s.project_id)
    assert top.hits[0].memory.key == "by-hand"
