"""Cleanup of old, empty, ended sessions. End to end against a real daemon."""
from __future__ import annotations

import time

import pytest

from omnid_client import Client, Invalid, NotFound
from tests.helpers import (
    count,
    ended,
    ev,
    raw_call,
    start,
    table_counts,
    wait_for,
)


def daemon_clock(client: Client) -> float:
    st = client.status()
    return st.started_at + st.uptime


# --- orphan cleanup --------------------------------------------------------------------


def test_cleanup_removes_only_old_ended_empty_sessions(client, home, tmp_path):
    orphan = ended(client, tmp_path / "o")
    with_task = start(client, tmp_path / "t")
    client.create_task(with_task.session_id, "keeps it")
    with_message = start(client, tmp_path / "m")
    client.add_message(with_message.session_id, "user", "keeps it")
    with_context = start(client, tmp_path / "c")
    client.append_context(with_context.session_id, [ev("decision", "keeps it")])
    with_memory = start(client, tmp_path / "s")
    client.add_session_memory(with_memory.session_id, "keeps it")
    for s in (with_task, with_message, with_context, with_memory):
        client.end(s.session_id)
    live = start(client, tmp_path / "l")
    # A margin on the daemon's clock (which judges the ages) between `live` and `young`,
    # so the cutoff between them stays clear of the latency of the calls below.
    wait_for(lambda: daemon_clock(client) > live.started_at + 0.4, what="the daemon's clock to move on")
    young = ended(client, tmp_path / "y")
    cutoff = (live.started_at + young.started_at) / 2
    before = table_counts(home)

    dry = client.cleanup_orphans(time.time() - cutoff, dry_run=True)

    assert (dry.dry_run, dry.session_ids) == (True, [orphan.session_id])
    assert table_counts(home) == before
    assert client.get(orphan.session_id).session_id == orphan.session_id

    real = client.cleanup_orphans(time.time() - cutoff)

    assert (real.dry_run, real.session_ids) == (False, [orphan.session_id])
    with pytest.raises(NotFound):
        client.get(orphan.session_id)
    for kept in (with_task, with_message, with_context, with_memory, live, young):
        assert client.get(kept.session_id).session_id == kept.session_id
    assert count(home, "sessions") == before["sessions"] - 1
    assert client.cleanup_orphans(time.time() - cutoff).session_ids == []
    assert client.cleanup_orphans(0, dry_run=True).session_ids == [young.session_id]


def test_cleanup_needs_a_non_negative_age(client):
    with pytest.raises(Invalid):
        raw_call(client, "maintenance.cleanup_orphans", {"older_than": -1})
