"""The session handlers in this process, through the real dispatcher: a real Store on a real
SQLite file, the real Reaper (pidfds on real owner processes) and the real live-session
cache, in the api Context the daemon builds from them. (test_sessions.py drives the same
methods through a daemon process.)"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest

from omnid import api
from omnid.identity import boot_id
from omnid.jobs.expiry import Expirer
from omnid.jobs.reaper import Reaper
from omnid.jobs.retention import Archiver
from omnid.store import Store
from omnid.store import sessions as q
from omnid_client.protocol import IncomingRequest, ResponseFrame
from tests.helpers import start_ticks


class Daemon:
    """The services the session handlers are given (an ``api.Context``), built as the
    daemon builds them, with the loop that runs their group commit and exit watches."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        # Group commit as the daemon runs it: a batch commits on the next loop turn, and
        # reuse activity rides on a commit up to a second later.
        self.store = Store(path, schedule=loop.call_soon, schedule_later=loop.call_later)
        self.reaper = Reaper(self.store, loop)
        self.reaper.start()
        self.live_sessions = q.LiveLookups(self.store)
        self.caller_pid = 0
        """The process calls come from unless a test names another."""
        archiver = Archiver(self.store, loop, age=lambda: None, archive_path=path.with_name("archive.db"))
        self.context = api.Context(
            self.store, self.store.guard, self.reaper, self.live_sessions, Expirer(self.store, loop), archiver,
            status=self._no_status, stop=self._no_stop,
        )

    @staticmethod
    def _no_status() -> Any:
        raise AssertionError("the session methods never ask for the daemon's status")

    @staticmethod
    def _no_stop(why: str) -> None:
        raise AssertionError(f"the session methods never stop the daemon ({why})")

    def close(self) -> None:
        self.reaper.stop()
        self.store.close()


class Rejected(Exception):
    def __init__(self, code: str, message: str, details: dict):
        super().__init__(f"{code}: {message}")
        self.code, self.details = code, details


@pytest.fixture
def daemon(tmp_path, spawn_owner) -> Iterator[Daemon]:
    loop = asyncio.new_event_loop()
    d = Daemon(tmp_path / "omnid.db", loop)
    # The test process plays the daemon, which may not own a session: calls come from a child.
    d.caller_pid = spawn_owner().pid
    yield d
    d.close()
    loop.close()


def call(daemon: Daemon, method: str, caller_pid: int | None = None, **params: Any) -> Any:
    """``method`` as the dispatcher runs it for a caller (``daemon.caller_pid`` unless ``caller_pid``)."""
    caller = api.Caller(caller_pid or daemon.caller_pid, os.getuid())
    response = api.dispatch(
        daemon.context, caller, IncomingRequest(1, method, msgspec.Raw(msgspec.msgpack.encode(params)))
    )
    assert isinstance(response, ResponseFrame), "the session methods reply at once, not from a task"
    daemon.loop.run_until_complete(asyncio.sleep(0))  # one loop turn: the batch commits
    assert not daemon.store.in_transaction
    assert response.id == 1
    if response.error is not None:
        raise Rejected(response.error.code, response.error.message, response.error.details)
    return response.result


def rejected(code: str, daemon: Daemon, method: str, **params: Any) -> Rejected:
    with pytest.raises(Rejected) as exc:
        call(daemon, method, **params)
    assert exc.value.code == code, exc.value
    return exc.value


# --- get_or_create ---------------------------------------------------------------------------


def test_a_session_is_bound_to_the_owners_identity_and_cwd(daemon, spawn_owner, tmp_path):
    owner = spawn_owner()
    got = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid, tool_version="2.1",
               session_type="agent", metadata={"k": [1, 2]})
    s = got.session
    assert got.status == "created"
    assert (s.owner_pid, s.owner_start, s.boot_id) == (owner.pid, start_ticks(owner.pid), boot_id())
    assert (s.tool_id, s.tool_version, s.session_type, s.metadata) == ("t", "2.1", "agent", {"k": [1, 2]})
    assert s.workspace == os.getcwd() and s.project_id is not None
    assert s.started_at == s.last_activity and s.ended_at is None and s.end_reason is None
    assert q.get(daemon.store.db, s.session_id) == s
    assert {(o.pid, o.start): sids for o, sids in daemon.reaper.owners.items()} == {
        (owner.pid, start_ticks(owner.pid)): {s.session_id}
    }


def test_without_a_pid_the_caller_owns_it_and_an_explicit_workspace_is_kept(daemon, tmp_path):
    s = call(daemon, "session.get_or_create", tool_id="t", workspace=str(tmp_path)).session
    assert s.owner_pid == daemon.caller_pid and s.owner_start == start_ticks(daemon.caller_pid)
    assert s.workspace == str(tmp_path)


def test_dedup_reuses_the_live_session_and_records_the_activity(daemon, spawn_owner):
    owner = spawn_owner()
    first = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid).session
    again = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid)
    assert again.status == "existing" and again.session.session_id == first.session_id
    assert again.session.last_activity > first.last_activity
    assert daemon.store.pending_activity(first.session_id) == again.session.last_activity
    found = call(daemon, "session.find", tool_id="t", pid=owner.pid).session
    assert found.session_id == first.session_id and found.last_activity == again.session.last_activity
    assert call(daemon, "session.get", session_id=first.session_id).last_activity == again.session.last_activity


def test_dedup_and_non_dedup_sessions_stay_apart(daemon, spawn_owner):
    owner = spawn_owner()
    plain = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid, dedup=False)
    shared = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid)
    assert plain.status == shared.status == "created"
    assert shared.session.session_id != plain.session.session_id
    other = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid, dedup=False)
    assert other.status == "created"
    assert other.session.session_id not in {plain.session.session_id, shared.session.session_id}
    for method in ("session.get_or_create", "session.find"):
        assert call(daemon, method, tool_id="t", pid=owner.pid).session.session_id == shared.session.session_id
    assert len(next(iter(daemon.reaper.owners.values()))) == 3


def test_another_tool_on_the_same_owner_gets_its_own_session(daemon, spawn_owner):
    owner = spawn_owner()
    a = call(daemon, "session.get_or_create", tool_id="a", pid=owner.pid).session
    b = call(daemon, "session.get_or_create", tool_id="b", pid=owner.pid).session
    assert a.session_id != b.session_id


def test_an_owner_that_must_be_an_ancestor_must_be_one(daemon, spawn_owner):
    stranger = spawn_owner()
    err = rejected(
        "permission", daemon, "session.get_or_create", tool_id="t", pid=stranger.pid, owner_must_be_ancestor=True
    )
    assert err.details["field"] == "pid"
    assert q.count_live(daemon.store.db) == 0
    s = call(daemon, "session.get_or_create", tool_id="t", pid=os.getppid(), owner_must_be_ancestor=True).session
    assert s.owner_pid == os.getppid()


def test_unusable_owners_and_metadata_are_refused_before_anything_is_stored(daemon, zombie):
    rejected("not_found", daemon, "session.get_or_create", tool_id="t", pid=zombie())
    rejected("invalid", daemon, "session.get_or_create", tool_id="t", pid=0)
    # The daemon itself (here: the test process), named or calling on its own behalf.
    rejected("invalid", daemon, "session.get_or_create", tool_id="t", pid=os.getpid())
    rejected("invalid", daemon, "session.get_or_create", tool_id="t", caller_pid=os.getpid())
    rejected("too_large", daemon, "session.get_or_create", tool_id="t", metadata={"x": "y" * 70_000})
    assert q.count_live(daemon.store.db) == 0 and daemon.reaper.owners == {}


def test_find_for_a_process_without_a_session_or_gone_is_none(daemon, spawn_owner, zombie):
    assert call(daemon, "session.find", tool_id="t", pid=spawn_owner().pid).session is None
    assert call(daemon, "session.find", tool_id="t", pid=zombie()).session is None
    call(daemon, "session.get_or_create", tool_id="t")
    assert call(daemon, "session.find", tool_id="t").session.owner_pid == daemon.caller_pid
    assert call(daemon, "session.find", tool_id="other").session is None


# --- heartbeat and end -----------------------------------------------------------------------


def test_heartbeat_moves_last_activity_of_a_live_session_only(daemon):
    s = call(daemon, "session.get_or_create", tool_id="t").session
    beat = call(daemon, "session.heartbeat", session_id=s.session_id)
    assert beat.last_activity > s.last_activity
    assert q.get(daemon.store.db, s.session_id).last_activity == beat.last_activity
    call(daemon, "session.end", session_id=s.session_id)
    assert rejected("conflict", daemon, "session.heartbeat", session_id=s.session_id).details["end_reason"] == "ended"


def test_end_ends_untracks_and_is_idempotent(daemon, spawn_owner):
    owner = spawn_owner()
    a = call(daemon, "session.get_or_create", tool_id="a", pid=owner.pid).session
    b = call(daemon, "session.get_or_create", tool_id="b", pid=owner.pid).session
    ended = call(daemon, "session.end", session_id=a.session_id)
    assert ended.session_id == a.session_id and ended.end_reason == "ended" and ended.ended_at is not None
    assert q.get(daemon.store.db, a.session_id).end_reason == "ended"
    assert list(daemon.reaper.owners.values()) == [{b.session_id}], "the owner stays watched for b"
    assert call(daemon, "session.end", session_id=a.session_id) == ended
    call(daemon, "session.end", session_id=b.session_id)
    assert daemon.reaper.owners == {}, "the owner's watch went with its last session"
    again = call(daemon, "session.get_or_create", tool_id="a", pid=owner.pid)
    assert again.status == "created" and again.session.session_id != a.session_id


def test_unknown_sessions_are_not_found(daemon):
    sid = "00000000-0000-4000-8000-000000000000"
    for method in ("session.get", "session.end", "session.heartbeat", "session.summary"):
        assert rejected("not_found", daemon, method, session_id=sid).details["session_id"] == sid


# --- get, list and summary -------------------------------------------------------------------


def test_list_filters_pages_and_shows_pending_activity(daemon, spawn_owner):
    owner = spawn_owner()
    made = [call(daemon, "session.get_or_create", tool_id=f"t{i % 2}", pid=owner.pid, dedup=False,
                 session_type="a" if i < 3 else "b", workspace=f"/w{i % 3}").session for i in range(6)]
    call(daemon, "session.end", session_id=made[0].session_id)
    page = call(daemon, "session.list", limit=4)
    assert [s.session_id for s in page.sessions] == [s.session_id for s in reversed(made)][:4]
    rest = call(daemon, "session.list", limit=4, cursor=page.next_cursor)
    assert [s.session_id for s in rest.sessions] == [made[1].session_id, made[0].session_id]
    assert rest.next_cursor is None
    def listed_ids(**where: Any) -> set[str]:
        return {s.session_id for s in call(daemon, "session.list", **where).sessions}

    assert listed_ids(tool_id="t1") == {made[i].session_id for i in (1, 3, 5)}
    assert listed_ids(session_type="a") == {made[i].session_id for i in range(3)}
    assert listed_ids(workspace="/w0") == {made[i].session_id for i in (0, 3)}
    assert made[0].session_id not in {s.session_id for s in call(daemon, "session.list", status="live").sessions}
    assert [s.session_id for s in call(daemon, "session.list", status="ended").sessions] == [made[0].session_id]
    # A reuse's activity, not yet committed, shows in the list at once.
    reused = call(daemon, "session.get_or_create", tool_id="solo").session
    bumped = call(daemon, "session.get_or_create", tool_id="solo").session.last_activity
    listed = {s.session_id: s for s in call(daemon, "session.list", tool_id="solo").sessions}
    assert listed[reused.session_id].last_activity == bumped


def test_summary_counts_what_the_session_holds(daemon):
    s = call(daemon, "session.get_or_create", tool_id="t").session
    call(daemon, "message.add", session_id=s.session_id, messages=[
        {"role": "user", "content": "a", "tokens_used": 3, "cost_usd": 0.5},
        {"role": "assistant", "content": "b", "tokens_used": 4},
    ])
    call(daemon, "task.create", session_id=s.session_id, title="x")
    summary = call(daemon, "session.summary", session_id=s.session_id)
    assert summary.session_id == s.session_id and summary.tool_id == "t" and summary.live
    assert (summary.message_count, summary.total_tokens, summary.task_count) == (2, 7, 1)
    assert summary.messages_by_role == {"user": 1, "assistant": 1}
    assert summary.total_cost == pytest.approx(0.5)
    assert summary.first_message_at <= summary.last_message_at and summary.duration > 0
    ended = call(daemon, "session.end", session_id=s.session_id)
    done = call(daemon, "session.summary", session_id=s.session_id)
    assert not done.live and done.ended_at == ended.ended_at
    assert done.duration == pytest.approx(ended.ended_at - s.started_at)


def test_the_default_workspace_is_the_owners_cwd_not_the_daemons(daemon, tmp_path):
    import subprocess

    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    owner = subprocess.Popen(["sleep", "600"], cwd=elsewhere)
    try:
        s = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid).session
        assert s.workspace == str(elsewhere) != os.getcwd()
    finally:
        owner.kill()
        owner.wait()
