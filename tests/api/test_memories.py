"""Project memories (versions, TTL, limits) and session memories. End to end against a real daemon."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from omnid.projects import project_id_for
from omnid_client import Client, Conflict, Invalid, NotFound, TooLarge
from omnid_client.protocol import (
    MAX_VALUE_BYTES,
)
from tests.helpers import (
    MEMORY_ID,
    SESSION_MEMORY_ID,
    UNKNOWN_PROJECT,
    UNKNOWN_SESSION,
    DaemonProcess,
    count,
    db_rows,
    refused,
    text_packing_to,
    wait_for,
)

# --- project memories ------------------------------------------------------------------


def test_put_then_get_counts_each_read(client, home, ws):
    t0 = time.time()
    put = client.put_memory("style", "black", workspace=str(ws), metadata={"by": "test"})
    t1 = time.time()

    assert MEMORY_ID.match(put.memory_id)
    assert put.project_id == project_id_for(str(ws))
    assert (put.key, put.value, put.metadata, put.version) == ("style", "black", {"by": "test"}, 1)
    assert (put.accessed_count, put.last_accessed, put.expires_at) == (0, None, None)
    assert t0 <= put.created_at == put.updated_at <= t1

    first = client.get_memory("style", workspace=str(ws))
    second = client.get_memory("style", project_id=put.project_id)

    assert (first.memory_id, first.value) == (put.memory_id, "black")
    assert (first.accessed_count, second.accessed_count) == (1, 2)
    assert put.created_at < first.last_accessed < second.last_accessed <= time.time()
    stored = db_rows(
        home / "omnid.db", "SELECT accessed_count, last_accessed FROM memories WHERE memory_id = ?", put.memory_id
    )
    assert stored == [(2, second.last_accessed)]
    assert client.list_memories(workspace=str(ws))[0].accessed_count == 2


def test_memories_are_listed_most_recently_accessed_first(client, ws):
    for key in "abc":
        client.put_memory(key, key.upper(), workspace=str(ws))

    def keys(limit: int = 50) -> list[str]:
        return [m.key for m in client.list_memories(workspace=str(ws), limit=limit)]

    assert keys() == ["c", "b", "a"]
    client.get_memory("a", workspace=str(ws))
    assert keys() == ["a", "c", "b"]
    client.get_memory("b", workspace=str(ws))
    assert keys() == ["b", "a", "c"]
    assert keys(limit=2) == ["b", "a"]


VALUES = ["text", 42, 3.5, True, None, [1, "two", {"three": 3}], {"nested": {"list": [1, 2]}}, ""]


def test_each_put_keeps_the_earlier_value_as_a_version(client, home, ws):
    puts = [client.put_memory("k", v, workspace=str(ws), metadata={"n": i}) for i, v in enumerate(VALUES)]

    assert {p.memory_id for p in puts} == {puts[0].memory_id}
    assert [p.version for p in puts] == list(range(1, len(VALUES) + 1))
    history = client.memory_history("k", workspace=str(ws))
    assert (history.memory_id, history.key) == (puts[0].memory_id, "k")
    assert [v.version for v in history.versions] == list(range(1, len(VALUES) + 1))
    assert [(type(v.value), v.value) for v in history.versions] == [(type(v), v) for v in VALUES]
    assert [v.metadata for v in history.versions] == [{"n": i} for i in range(len(VALUES))]
    assert history.versions == sorted(history.versions, key=lambda v: v.created_at)

    current = client.get_memory("k", workspace=str(ws))
    assert (current.value, current.version, current.metadata) == (VALUES[-1], len(VALUES), {"n": len(VALUES) - 1})
    assert current.created_at == puts[0].created_at < current.updated_at
    assert count(home, "memory_versions") == len(VALUES)


def test_delete_removes_the_memory_and_its_history(client, home, ws):
    first = client.put_memory("gone", 1, workspace=str(ws))
    client.put_memory("gone", 2, workspace=str(ws))
    client.put_memory("kept", 3, workspace=str(ws))

    assert client.delete_memory("gone", workspace=str(ws)).deleted == 1

    for call in (client.get_memory, client.memory_history, client.delete_memory):
        with pytest.raises(NotFound):
            call("gone", workspace=str(ws))
    assert [m.key for m in client.list_memories(workspace=str(ws))] == ["kept"]
    assert count(home, "memory_versions", "memory_id = ?", first.memory_id) == 0
    again = client.put_memory("gone", "new", workspace=str(ws))
    assert (again.version, again.value) == (1, "new")
    assert again.memory_id != first.memory_id


def test_memories_belong_to_their_project(client, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    client.put_memory("k", "in a", workspace=str(a))
    client.put_memory("k", "in b", workspace=str(b))

    assert client.get_memory("k", workspace=str(a)).value == "in a"
    assert client.get_memory("k", workspace=str(b)).value == "in b"
    assert [m.value for m in client.list_memories(workspace=str(a))] == ["in a"]
    with pytest.raises(NotFound):
        client.get_memory("k", project_id=UNKNOWN_PROJECT)
    with pytest.raises(NotFound):
        client.get_memory("missing", workspace=str(a))


def expired(client: Client, key: str, ws: Path) -> bool:
    try:
        client.get_memory(key, workspace=str(ws))
    except NotFound:
        return True
    return False


def test_an_expired_memory_is_never_returned_and_is_purged_from_the_database(home, daemon, ws):
    with daemon.client() as c:
        keep = c.put_memory("keep", "forever", workspace=str(ws))
        t0 = time.time()
        brief = c.put_memory("brief", "short lived", workspace=str(ws), ttl=0.3)
        t1 = time.time()

        assert isinstance(brief.expires_at, float)
        assert t0 + 0.3 <= brief.expires_at <= t1 + 0.3
        assert c.get_memory("brief", workspace=str(ws)).value == "short lived"

        wait_for(lambda: expired(c, "brief", ws), timeout=5, what="the memory to expire")
        assert time.time() >= brief.expires_at
        assert [m.key for m in c.list_memories(workspace=str(ws))] == ["keep"]
        with pytest.raises(NotFound):
            c.memory_history("brief", workspace=str(ws))
        assert c.get_project(keep.project_id).memory_count == 1
        assert c.stats().project_memories == 1
    assert daemon.stop() == 0

    again = DaemonProcess(home).start()
    try:
        for table in ("memories", "memory_versions"):
            assert count(home, table, "memory_id = ?", brief.memory_id) == 0, f"{table} still holds the expired memory"
        assert count(home, "search_index", "ref_id = ?", brief.memory_id) == 0
        with again.client() as c:
            assert c.get_memory("keep", workspace=str(ws)).value == "forever"
    finally:
        assert again.stop() == 0


def test_a_put_after_expiry_starts_a_new_memory(client, ws):
    old = client.put_memory("k", "old", workspace=str(ws), ttl=0.2)
    wait_for(lambda: expired(client, "k", ws), timeout=5, what="the memory to expire")

    new = client.put_memory("k", "new", workspace=str(ws))

    assert (new.version, new.expires_at) == (1, None)
    assert new.memory_id != old.memory_id
    assert [v.value for v in client.memory_history("k", workspace=str(ws)).versions] == ["new"]


def test_an_expired_memory_is_not_found_by_search(client, ws):
    client.put_memory("brief", "ephemeral quokka", workspace=str(ws), ttl=0.2)
    assert [h.kind for h in client.search("quokka")] == ["memory"]
    wait_for(lambda: expired(client, "brief", ws), timeout=5, what="the memory to expire")

    assert client.search("quokka") == []


def test_a_ttl_out_of_range_is_invalid(client, home, ws):
    for ttl in (0, -1, math.nan, 11 * 365 * 86400):
        refused(Invalid, f"ttl={ttl}", client.put_memory, "k", "v", workspace=str(ws), ttl=ttl)
    assert count(home, "memories") == 0


def test_values_are_limited_by_their_encoded_size(client, home, ws):
    fits = client.put_memory("big", text_packing_to(MAX_VALUE_BYTES), workspace=str(ws))
    assert len(client.get_memory("big", workspace=str(ws)).value) == len(fits.value)

    with pytest.raises(TooLarge):
        client.put_memory("big", text_packing_to(MAX_VALUE_BYTES + 1), workspace=str(ws))
    assert client.get_memory("big", workspace=str(ws)).version == 1
    assert count(home, "memory_versions") == 1


def test_memory_keys_are_1_to_256_characters(client, home, ws):
    refused(Invalid, "empty key", client.put_memory, "", "v", workspace=str(ws))
    refused(TooLarge, "long key", client.put_memory, "k" * 257, "v", workspace=str(ws))
    assert count(home, "memories") == 0
    assert client.put_memory("k" * 256, "v", workspace=str(ws)).key == "k" * 256


# --- session memories ------------------------------------------------------------------


def test_session_memories_are_listed_and_join_the_context(client, session):
    sid = session.session_id
    assert client.session_summary(sid).has_memory is False
    assert client.list_session_memories(sid) == []

    first = client.add_session_memory(sid, "prefers tabs", memory_type="preference", metadata={"from": "chat"})
    second = client.add_session_memory(sid, "runs tests with -q")

    assert SESSION_MEMORY_ID.match(first.memory_id)
    assert (first.session_id, first.memory_type, first.content, first.metadata) == (
        sid, "preference", "prefers tabs", {"from": "chat"},
    )
    assert second.memory_type == "note"
    assert client.list_session_memories(sid) == [first, second]
    assert client.session_summary(sid).has_memory is True
    assert client.get(sid).last_activity >= second.created_at
    memories = client.get_context(sid).memories
    assert [(m.ref, m.source, m.memory_type, m.content) for m in memories] == [
        (second.memory_id, "session_memory", "note", "runs tests with -q"),
        (first.memory_id, "session_memory", "preference", "prefers tabs"),
    ]


def test_session_memories_need_a_live_session_and_a_valid_type(client, home, session):
    with pytest.raises(NotFound):
        client.add_session_memory(UNKNOWN_SESSION, "x")
    with pytest.raises(NotFound):
        client.list_session_memories(UNKNOWN_SESSION)
    with pytest.raises(Invalid):
        client.add_session_memory(session.session_id, "x", memory_type="has spaces")
    with pytest.raises(Invalid):
        client.add_session_memory(session.session_id, "")
    client.end(session.session_id)
    with pytest.raises(Conflict):
        client.add_session_memory(session.session_id, "x")
    assert count(home, "session_memories") == 0
