"""A session's summary and the service stats. End to end against a real daemon."""
from __future__ import annotations

import pytest

from omnid_client import NotFound
from tests.helpers import (
    TOOL,
    UNKNOWN_SESSION,
    ev,
    msg,
    start,
)

# --- summary and stats -----------------------------------------------------------------


def test_summary_of_a_session(client, session):
    sid = session.session_id
    empty = client.session_summary(sid)
    assert (empty.message_count, empty.total_tokens, empty.total_cost, empty.messages_by_role) == (0, 0, 0.0, {})
    assert (empty.first_message_at, empty.last_message_at, empty.has_memory) == (None, None, False)

    client.add_messages(
        sid, [msg("q", "user", tokens_used=10, cost_usd=0.125), msg("a", "assistant", tokens_used=20, cost_usd=0.25)]
    )
    client.add_message(sid, "user", "q2", tokens_used=5)
    client.create_task(sid, "do it")
    client.append_context(sid, [ev("decision", "d"), ev("search", "s")])
    client.add_session_memory(sid, "remember")
    messages = client.list_messages(sid).messages

    s = client.session_summary(sid)
    assert (s.session_id, s.tool_id, s.project_id, s.live) == (sid, TOOL, session.project_id, True)
    assert (s.message_count, s.total_tokens, s.total_cost) == (3, 35, 0.375)
    assert s.messages_by_role == {"user": 2, "assistant": 1}
    assert (s.task_count, s.context_events, s.has_memory) == (1, 2, True)
    assert (s.first_message_at, s.last_message_at) == (messages[0].created_at, messages[-1].created_at)
    assert s.started_at == session.started_at < s.first_message_at < s.last_message_at <= s.last_activity
    assert s.ended_at is None and s.duration >= s.last_message_at - s.started_at

    done = client.end(sid)
    s = client.session_summary(sid)
    assert (s.live, s.ended_at) == (False, done.ended_at)
    assert s.duration == pytest.approx(done.ended_at - done.started_at)
    with pytest.raises(NotFound):
        client.session_summary(UNKNOWN_SESSION)


def test_service_stats(client, tmp_path):
    empty = client.stats()
    assert (empty.sessions, empty.messages, empty.total_cost, empty.avg_session_seconds) == (0, 0, 0.0, None)
    assert (empty.avg_messages_per_session, empty.avg_tokens_per_session) == (0.0, 0.0)

    one, two = tmp_path / "one", tmp_path / "two"
    a = start(client, one, "tool-a")
    b = start(client, two, "tool-a")
    c = start(client, one, "tool-b")
    client.add_messages(a.session_id, [msg(tokens_used=10, cost_usd=0.5)] * 3)
    client.add_message(b.session_id, "user", "x", tokens_used=4, cost_usd=0.25)
    client.put_memory("m1", 1, workspace=str(one))
    client.put_memory("m2", 2, workspace=str(one))
    client.add_session_memory(a.session_id, "note")
    client.create_task(a.session_id, "open one")
    client.update_task(client.create_task(a.session_id, "done one").task_id, status="done")
    ended_b, ended_c = client.end(b.session_id), client.end(c.session_id)

    st = client.stats()
    assert (st.sessions, st.live_sessions, st.ended_sessions, st.projects) == (3, 1, 2, 2)
    assert (st.messages, st.total_tokens, st.total_cost) == (4, 34, 1.75)
    assert (st.project_memories, st.session_memories, st.tasks, st.open_tasks) == (2, 1, 2, 1)
    assert st.avg_messages_per_session == pytest.approx(4 / 3)
    assert st.avg_tokens_per_session == pytest.approx(34 / 3)
    durations = [s.ended_at - s.started_at for s in (ended_b, ended_c)]
    assert st.avg_session_seconds == pytest.approx(sum(durations) / 2)
    assert st.sessions_by_tool == {"tool-a": 2, "tool-b": 1}
