"""Full-text search over messages, memories and decisions. End to end against a real daemon."""
from __future__ import annotations

import re
from typing import Any

import pytest

from omnid_client import Invalid, NotFound
from tests.helpers import (
    UNKNOWN_PROJECT,
    UNKNOWN_SESSION,
    ev,
    start,
)

# --- search ----------------------------------------------------------------------------


@pytest.fixture
def corpus(client, tmp_path) -> dict[str, Any]:
    """Two projects; the first with one session holding every searchable kind."""
    one, two = tmp_path / "one", tmp_path / "two"
    s1, s2 = start(client, one), start(client, two)
    m1 = client.add_message(s1.session_id, "user", "the zebra crossing is closed").message_ids[0]
    client.append_context(s1.session_id, [ev("decision", "adopt the zebra library", detail="it is fast")])
    memory = client.put_memory("animal", "zebra stripes everywhere", workspace=str(one))
    smem = client.add_session_memory(s1.session_id, "zebra notes for later")
    m2 = client.add_message(s2.session_id, "user", "a zebra in another project").message_ids[0]
    return {"s1": s1, "s2": s2, "m1": str(m1), "m2": str(m2), "memory": memory, "smem": smem}


def test_search_finds_messages_memories_and_decisions(client, corpus):
    hits = client.search("zebra")

    assert sorted(h.kind for h in hits) == ["decision", "memory", "message", "message", "session_memory"]
    by_ref = {h.ref_id: h for h in hits}
    assert by_ref[corpus["m1"]].session_id == corpus["s1"].session_id
    assert by_ref[corpus["memory"].memory_id].project_id == corpus["memory"].project_id
    assert by_ref[corpus["memory"].memory_id].session_id is None
    assert by_ref[corpus["smem"].memory_id].kind == "session_memory"
    assert all("[zebra]" in h.snippet.lower() for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    decision = next(h for h in hits if h.kind == "decision")
    assert "fast" in decision.snippet


def test_search_filters_by_project_session_and_kind(client, corpus):
    s1, s2 = corpus["s1"], corpus["s2"]

    def kinds(**filters: Any) -> list[str]:
        return sorted(h.kind for h in client.search("zebra", **filters))

    assert kinds(project_id=s1.project_id) == ["decision", "memory", "message", "session_memory"]
    assert kinds(project_id=s2.project_id) == ["message"]
    assert kinds(session_id=s1.session_id) == ["decision", "message", "session_memory"]
    assert kinds(kinds=["memory"]) == ["memory"]
    assert kinds(kinds=["message", "decision"], project_id=s1.project_id) == ["decision", "message"]
    assert kinds(session_id=s2.session_id, kinds=["decision"]) == []
    assert [h.ref_id for h in client.search("zebra", limit=2)] == [h.ref_id for h in client.search("zebra")][:2]
    with pytest.raises(NotFound):
        client.search("zebra", session_id=UNKNOWN_SESSION)
    with pytest.raises(NotFound):
        client.search("zebra", project_id=UNKNOWN_PROJECT)
    with pytest.raises(Invalid):
        client.search("zebra", kinds=["file"])


def test_search_ranks_more_mentions_higher(client, session):
    sid = session.session_id
    once = client.add_message(sid, "user", "apple pear plum kiwi").message_ids[0]
    thrice = client.add_message(sid, "user", "apple apple apple kiwi").message_ids[0]

    hits = client.search("apple")

    assert [h.ref_id for h in hits] == [str(thrice), str(once)]
    assert hits[0].score > hits[1].score


FTS_SYNTAX = ['"zebra', "zebra)", "(zebra", "zebra*", "-zebra", "^zebra", "zebra:", "{zebra}", "zebra AND",
              "NOT zebra", "zebra OR", "NEAR(zebra)", '"', "()", "*", "-", "AND", "a AND (b OR", "col:zebra",
              "zebra + -"]


def test_query_syntax_characters_are_plain_text(client, corpus):
    for text in FTS_SYNTAX:
        try:
            hits = client.search(text)
        except Exception as e:  # noqa: BLE001 - reported as the failure
            pytest.fail(f"search({text!r}) raised {type(e).__name__}: {e}")
        if re.fullmatch(r"\W*zebra\W*", text):
            assert len(hits) == 5, f"{text!r} should search for the word zebra"


def test_search_follows_memory_updates_and_deletes(client, ws):
    memory = client.put_memory("color", "crimson", workspace=str(ws))
    client.put_memory("color", "turquoise", workspace=str(ws))

    assert client.search("crimson") == []
    assert [(h.kind, h.ref_id) for h in client.search("turquoise")] == [("memory", memory.memory_id)]

    client.delete_memory("color", workspace=str(ws))
    assert client.search("turquoise") == []
