"""The daemon's metrics against a real daemon: counters move exactly as calls are made,
every reply lands in its method's histogram, and totals survive a restart."""

from __future__ import annotations

import resource
import uuid

import pytest

from omnid_client import Client, Invalid, NotFound
from omnid_client.protocol import DaemonMetrics
from tests.helpers import DaemonProcess, wait_for

TOOL = "metrics-test"
KEY = "instance-1"


class Counted:
    """A client whose calls the test counts by method, to compare with what the daemon counted."""

    def __init__(self, client: Client):
        self.client = client
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):
        method = {"get_or_create": "session.get_or_create", "get": "session.get", "end": "session.end"}[name]
        fn = getattr(self.client, name)

        def call(*args, **kwargs):
            self.calls[method] = self.calls.get(method, 0) + 1
            return fn(*args, **kwargs)

        return call


def reaped(c: Counted, session_id: str) -> bool:
    return c.get(session_id).end_reason == "reaped"


def test_counters_move_exactly_as_calls_are_made(client: Client, spawn_owner):
    before = client.metrics()
    assert before.enabled and before.since_start.get_or_create == {} and before.reuse_rate is None
    c = Counted(client)
    first, second, doomed = spawn_owner(), spawn_owner(), spawn_owner()

    sid = c.get_or_create(TOOL, pid=first.pid).session.session_id
    assert c.get_or_create(TOOL, pid=first.pid).status == "existing"
    assert c.get_or_create(TOOL, pid=first.pid).status == "existing"
    keyed = c.get_or_create(TOOL, pid=doomed.pid, resume_key=KEY).session.session_id
    doomed.kill()
    doomed.wait()
    wait_for(lambda: reaped(c, keyed), what="the killed owner's session to be reaped")
    assert c.get_or_create(TOOL, pid=second.pid, resume_key=KEY).status == "resumed"
    with pytest.raises(NotFound):
        c.get(str(uuid.uuid4()))
    with pytest.raises(Invalid):
        c.get("not-a-session-id")
    c.end(sid)

    m = client.metrics()
    assert m.since_start.get_or_create == {TOOL: {"created": 2, "existing": 2, "resumed": 1}}
    assert m.reuse_rate == pytest.approx(3 / 5)
    assert m.since_start.sessions_ended == {"reaped": 1, "ended": 1}
    assert m.reap_latency["event"].count == 1 and m.reap_latency["sweep"].count == 0
    assert 0 < m.reap_latency["event"].sum < 10
    assert m.since_start.errors == {"session.get": {"not_found": 1, "invalid": 1}}
    assert m.since_start.requests == {**c.calls, "daemon.metrics": 1}
    for name, mm in m.methods.items():
        assert mm.latency.count == mm.requests == m.since_start.requests[name], name
        assert len(mm.latency.counts) == len(mm.latency.bounds) + 1
    assert m.methods["session.get_or_create"].latency.bounds[0] == 50e-6
    assert m.methods["session.get_or_create"].latency.bounds[-1] == 1.0
    # Creations, the resume, the end and the reap each committed; the reused calls did not need to.
    assert m.commit_batch.count >= 5 and m.commit_seconds.count == m.commit_batch.count
    assert m.commit_failures == 0
    assert m.connections == 1 and m.watched_owners == 1  # the resumed owner: first's session ended
    assert m.database_bytes > 0 and m.wal_bytes > 0
    assert m.totals == m.since_start, "a first run has no earlier totals"


def test_totals_are_kept_across_a_restart_and_since_start_begins_afresh(home, spawn_owner):
    d = DaemonProcess(home).start()
    owner = spawn_owner()
    try:
        with d.client() as client:
            client.get_or_create(TOOL, pid=owner.pid)
            client.get_or_create(TOOL, pid=owner.pid)
            first = client.metrics()
    finally:
        assert d.stop() == 0, d.log_text()
    assert (home / "metrics.json").exists()
    d = DaemonProcess(home).start()
    try:
        with d.client() as client:
            client.get_or_create(TOOL, pid=owner.pid)
            m: DaemonMetrics = client.metrics()
    finally:
        assert d.stop() == 0, d.log_text()
    assert m.since_start.get_or_create == {TOOL: {"created": 0, "existing": 1, "resumed": 0}}
    assert m.totals.get_or_create == {TOOL: {"created": 1, "existing": 2, "resumed": 0}}
    assert m.totals.requests["daemon.metrics"] == 1, "the first run's own metrics call, saved at its stop"
    assert m.totals_since == first.started_at
    assert m.total_reuse_rate == pytest.approx(2 / 3) and m.reuse_rate == 1.0


def test_a_damaged_totals_file_is_ignored_and_replaced(home):
    (home / "metrics.json").write_text('{"since": "yesterday"')
    d = DaemonProcess(home).start()
    try:
        with d.client() as client:
            m = client.metrics()
        assert m.totals == m.since_start
    finally:
        assert d.stop() == 0, d.log_text()
    assert "ignoring the metrics totals" in d.log_text()
    assert '"since":' in (home / "metrics.json").read_text()


def test_with_metrics_off_nothing_is_counted(home, monkeypatch, spawn_owner):
    monkeypatch.setenv("OMNID_METRICS", "off")
    d = DaemonProcess(home).start()
    try:
        with d.client() as client:
            client.get_or_create(TOOL, pid=spawn_owner().pid)
            m = client.metrics()
    finally:
        assert d.stop() == 0, d.log_text()
    assert not m.enabled
    assert m.since_start.requests == {} and m.since_start.get_or_create == {} and m.commit_batch.count == 0


def test_owners_past_the_pidfd_budget_are_reaped_by_the_sweep_with_a_bounded_latency(
    monkeypatch, start_daemon, spawn_owner
):
    """Owners with an exit watch are timed from their exit event; those left to the sweep by
    the fd limit get an upper bound (since the sweep before, which found them alive)."""
    monkeypatch.setenv("OMNID_SWEEP_INTERVAL", "1")
    d = start_daemon(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    owners = [spawn_owner() for _ in range(60)]
    with d.client(timeout=10) as c:
        for i, p in enumerate(owners):
            c.get_or_create(f"owned-{i}", pid=p.pid)
        budget = c.status().pidfd_budget
        assert budget is not None and 0 < budget < len(owners)
        for p in owners:
            p.kill()
            p.wait()
        wait_for(lambda: c.status().live_sessions == 0, timeout=30, what="every owner's sessions to be reaped")
        m = c.metrics()
    by_event, by_sweep = m.reap_latency["event"], m.reap_latency["sweep"]
    assert m.since_start.sessions_ended == {"reaped": len(owners)}
    assert by_event.count + by_sweep.count == len(owners)
    assert by_sweep.count >= len(owners) - budget - 5 and by_event.count >= 1
