"""The session handlers in this process, through the real dispatcher: a real Store on a real
SQLite file, the real Reaper (pidfds on real owner processes) and the real live-session
cache, in the api Context the daemon builds from them. (test_sessions.py drives the same
methods through a daemon process.)"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest

from omnid import api
from omnid.identity import boot_id, pidfd_inode, pidfd_inodes_unique
from omnid.jobs.expiry import Expirer
from omnid.jobs.reaper import Reaper
from omnid.jobs.retention import Archiver
from omnid.store import ACTIVITY_DELAY, Store, sessions as q
from omnid_client.protocol import MAX_TAGS, IncomingRequest, ResponseFrame, Session, SessionOwner
from tests.helpers import identity_of, no_free_fds, run_loop_until, start_ticks


class Daemon:
    """The services the session handlers are given (an ``api.Context``), built as the
    daemon builds them, with the loop that runs their group commit and exit watches."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        # Group commit as the daemon runs it: a batch commits on the next loop turn, and
        # reuse activity rides on a commit up to a second later.
        self.store = Store(path, schedule=loop.call_soon, schedule_later=loop.call_later)
        self.reaper = Reaper(self.store, loop, sweep_interval=60.0)
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
    ino = pidfd_inode(owner.pid) if pidfd_inodes_unique() else None
    stored = daemon.store.db.execute("SELECT owner_ino, dedup FROM sessions WHERE session_id = ?", (s.session_id,))
    assert stored.fetchone() == (ino, 1), "the owner's pidfd inode, where the kernel makes it unique"


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
    # Like a reuse's, the bump waits for a commit (at most ACTIVITY_DELAY) but reads see it at once.
    assert q.get(daemon.store.db, s.session_id).last_activity == s.last_activity
    assert daemon.store.pending_activity(s.session_id) == beat.last_activity
    assert call(daemon, "session.get", session_id=s.session_id).last_activity == beat.last_activity
    daemon.loop.run_until_complete(asyncio.sleep(ACTIVITY_DELAY + 0.1))
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


# --- resume keys -----------------------------------------------------------------------------


def keyed(daemon: Daemon, owner: Any, key: str = "k", **params: Any) -> Any:
    return call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid, resume_key=key, **params)


def dies(owner: Any) -> None:
    owner.kill()
    owner.wait()


def history(daemon: Daemon, sid: str) -> list[tuple]:
    return [(o.pid, o.start, o.released) for o in call(daemon, "session.owners", session_id=sid).owners]


def test_a_resume_key_creates_returns_and_after_its_owner_died_resumes_one_session(daemon, spawn_owner):
    first, second = spawn_owner(), spawn_owner()
    made = keyed(daemon, first)
    s = made.session
    assert made.status == "created" and s.resume_key == "k" and s.owner_pid == first.pid
    again = keyed(daemon, first)
    assert (again.status, again.session.session_id) == ("existing", s.session_id)
    assert again.session.last_activity > s.last_activity
    assert daemon.store.pending_activity(s.session_id) == again.session.last_activity
    assert call(daemon, "session.find", tool_id="t", pid=first.pid, resume_key="k").session.session_id == s.session_id
    dies(first)  # its exit event is never handled here: the loop does not run
    resumed = keyed(daemon, second)
    r = resumed.session
    assert (resumed.status, r.session_id, r.owner_pid) == ("resumed", s.session_id, second.pid)
    assert (r.owner_start, r.boot_id, r.ended_at, r.end_reason) == (start_ticks(second.pid), boot_id(), None, None)
    assert r.owner_since > s.started_at and r.last_activity == r.owner_since
    assert q.get(daemon.store.db, s.session_id) == r
    assert history(daemon, s.session_id) == [(first.pid, s.owner_start, "died"), (second.pid, r.owner_start, None)]
    owners = call(daemon, "session.owners", session_id=s.session_id).owners
    assert (owners[0].since, owners[0].until, owners[1].since) == (s.started_at, r.owner_since, r.owner_since)
    assert {(o.pid, o.start): sids for o, sids in daemon.reaper.owners.items()} == {
        (second.pid, r.owner_start): {s.session_id}
    }, "the new owner is watched instead of the old one"
    assert call(daemon, "session.find", tool_id="t", pid=second.pid).session.session_id == s.session_id
    dies(second)
    third = spawn_owner()
    assert keyed(daemon, third).status == "resumed"
    assert [(o.pid, o.released) for o in call(daemon, "session.owners", session_id=s.session_id).owners] == [
        (first.pid, "died"), (second.pid, "died"), (third.pid, None)]


def test_a_keyed_session_whose_owner_lives_is_refused_to_another_process(daemon, spawn_owner):
    owner, other = spawn_owner(), spawn_owner()
    s = keyed(daemon, owner).session
    err = rejected("conflict", daemon, "session.get_or_create", tool_id="t", pid=other.pid, resume_key="k")
    assert err.details == {"session_id": s.session_id, "owner_pid": owner.pid}
    assert "resume key 'k'" in str(err) and f"process {owner.pid}" in str(err)
    assert call(daemon, "session.find", tool_id="t", pid=other.pid, resume_key="k").session is None
    assert call(daemon, "session.find", tool_id="t", pid=other.pid, resume_key="other").session is None
    assert q.get(daemon.store.db, s.session_id).owner_pid == owner.pid
    assert keyed(daemon, other, "other").status == "created", "another key is another session"


def test_a_keyed_session_of_a_living_process_this_daemon_does_not_watch_is_refused_too(daemon, spawn_owner):
    """A live session the reaper has no watch for (left over from before a restart, say):
    whether its owner lives is asked of /proc, not only of the watches."""
    owner, other = spawn_owner(), spawn_owner()
    recorded = identity_of(owner.pid)
    s = Session(str(uuid.uuid4()), "t", None, "default", owner.pid, recorded.start, recorded.boot_id, None, {},
                daemon.store.now(), daemon.store.now(), resume_key="k")
    with daemon.store.write() as db:
        q.insert(db, s, dedup=True)
    assert daemon.reaper.owners == {}
    err = rejected("conflict", daemon, "session.get_or_create", tool_id="t", pid=other.pid, resume_key="k")
    assert err.details == {"session_id": s.session_id, "owner_pid": owner.pid}


def test_a_keyed_session_without_an_owner_or_with_another_pidfd_inode_is_resumed(daemon, spawn_owner):
    """One imported without an owner process, and one whose recorded owner shares the
    caller's pid and start tick but had another pidfd inode: another process, now gone."""
    proc = spawn_owner()
    caller = identity_of(proc.pid)
    ino = pidfd_inode(proc.pid)
    now = daemon.store.now()
    imported = Session(str(uuid.uuid4()), "t", None, "default", None, None, None, None, {}, now, now, resume_key="i")
    recorded = Session(str(uuid.uuid4()), "t", None, "default", proc.pid, caller.start, caller.boot_id, None, {},
                       now, now, resume_key="k")
    with daemon.store.write() as db:
        q.insert(db, imported, dedup=False)
        q.insert(db, recorded, dedup=False, owner_ino=None if ino is None else ino + 1_000_000)
    other = spawn_owner()
    got = keyed(daemon, other, "i")
    assert (got.status, got.session.session_id, got.session.owner_pid) == ("resumed", imported.session_id, other.pid)
    if pidfd_inodes_unique():
        got = keyed(daemon, proc, "k")
        assert (got.status, got.session.session_id) == ("resumed", recorded.session_id)
        assert keyed(daemon, proc, "k").status == "existing"


def test_a_keyed_session_whose_recorded_pidfd_inode_differs_from_the_watched_process_is_resumed(daemon, spawn_owner):
    """The recorded owner had the pid and start tick of a process the reaper watches (for
    another session) but another pidfd inode: that watch is no proof the recorded one lives."""
    if not pidfd_inodes_unique():
        pytest.skip("this kernel has no pidfs: no inode tells the two apart")
    proc, other = spawn_owner(), spawn_owner()
    watched = call(daemon, "session.get_or_create", tool_id="w", pid=proc.pid).session
    recorded_owner = identity_of(proc.pid)
    now = daemon.store.now()
    recorded = Session(str(uuid.uuid4()), "t", None, "default", proc.pid, recorded_owner.start,
                       recorded_owner.boot_id, None, {}, now, now, resume_key="k")
    with daemon.store.write() as db:
        q.insert(db, recorded, dedup=False, owner_ino=pidfd_inode(proc.pid) + 1_000_000)
    found = call(daemon, "session.find", tool_id="t", pid=other.pid, resume_key="k").session
    assert found is not None and found.session_id == recorded.session_id
    got = keyed(daemon, other, "k")
    assert (got.status, got.session.session_id, got.session.owner_pid) == ("resumed", recorded.session_id, other.pid)
    assert q.get(daemon.store.db, watched.session_id).ended_at is None
    assert {(o.pid, frozenset(sids)) for o, sids in daemon.reaper.owners.items()} == {
        (proc.pid, frozenset({watched.session_id})), (other.pid, frozenset({recorded.session_id}))
    }, "the watched process keeps its watch and its own session"


@pytest.mark.parametrize("free", [1, 2])
def test_out_of_descriptors_get_or_create_still_binds_and_the_sweep_watches_the_owner_later(
    daemon, spawn_owner, tmp_path, free
):
    """With one descriptor left, no pidfd fits beside the look at /proc: the owner is left
    to the sweep, as past the fd budget; with two, /proc is read without the inode and the
    pidfd kept. Either way the call succeeds, and the owner's death still ends the session."""
    owner = spawn_owner()
    with no_free_fds(leave=free):
        got = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid, workspace=str(tmp_path))
    sid, who = got.session.session_id, identity_of(owner.pid)
    assert got.status == "created" and got.session.owner_start == who.start
    assert daemon.reaper.owners == {who: {sid}}
    assert daemon.reaper.watcher.watching(who) is (free == 2)
    daemon.reaper.sweep(trigger="sweep")
    assert daemon.reaper.watcher.watching(who), "the sweep gives it an exit watch once descriptors are back"
    dies(owner)
    run_loop_until(daemon.loop, lambda: q.get(daemon.store.db, sid).end_reason == "reaped")


def test_past_the_quota_a_resume_key_neither_creates_nor_resumes(daemon, spawn_owner):
    owner = spawn_owner()
    s = keyed(daemon, owner).session
    dies(owner)
    daemon.store.guard.max_bytes = 1  # max_database_bytes, as the daemon sets it from its config
    for key in ("k", "new"):
        err = rejected("storage", daemon, "session.get_or_create", tool_id="t", pid=spawn_owner().pid, resume_key=key)
        assert err.details["reason"] == "quota"
    assert q.get(daemon.store.db, s.session_id).owner_pid == owner.pid


def test_past_the_quota_a_new_session_is_refused_while_a_live_one_is_still_reused(daemon, spawn_owner):
    owner = spawn_owner()
    s = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid).session
    daemon.store.guard.max_bytes = 1  # max_database_bytes, as the daemon sets it from its config
    for params in ({"tool_id": "other"}, {"tool_id": "t", "dedup": False}):
        err = rejected("storage", daemon, "session.get_or_create", pid=owner.pid, **params)
        assert err.details["reason"] == "quota"
    reused = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid)
    assert (reused.status, reused.session.session_id) == ("existing", s.session_id), "reusing adds nothing"
    assert daemon.store.db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1


def test_an_ended_keyed_session_is_resumed_only_when_asked_and_only_within_the_window(daemon, spawn_owner):
    owner, later = spawn_owner(), spawn_owner()
    s = keyed(daemon, owner).session
    ended = call(daemon, "session.end", session_id=s.session_id)
    assert call(daemon, "session.find", tool_id="t", pid=later.pid, resume_key="k").session is None
    found = call(daemon, "session.find", tool_id="t", pid=later.pid, resume_key="k", resume_ended=True).session
    assert found.session_id == s.session_id
    assert call(daemon, "session.owners", session_id=s.session_id).owners[-1] == SessionOwner(
        owner.pid, s.owner_start, s.boot_id, s.started_at, ended.ended_at, "ended"
    ), "an ended session's owner, last of all"
    got = keyed(daemon, later, resume_ended=True)
    assert (got.status, got.session.session_id, got.session.owner_pid) == ("resumed", s.session_id, later.pid)
    owners = call(daemon, "session.owners", session_id=s.session_id).owners
    assert (owners[0].pid, owners[0].until, owners[0].released) == (owner.pid, ended.ended_at, "ended")
    # Its owner ends it and takes it back: it stays watched.
    call(daemon, "session.end", session_id=s.session_id)
    again = keyed(daemon, later, resume_ended=True)
    assert (again.status, again.session.owner_pid) == ("resumed", later.pid)
    assert {o.pid: sids for o, sids in daemon.reaper.owners.items()} == {later.pid: {s.session_id}}
    # Ended without resume_ended: a new session takes the key over.
    call(daemon, "session.end", session_id=s.session_id)
    fresh = keyed(daemon, later)
    assert fresh.status == "created" and fresh.session.session_id != s.session_id
    # Expired longer ago than the resume window: a new session, never the old one.
    call(daemon, "session.end", session_id=fresh.session.session_id)
    window = daemon.context.settings().resume_window
    with daemon.store.write() as db:
        db.execute("UPDATE sessions SET end_reason = 'expired', ended_at = ? WHERE session_id = ?",
                   (daemon.store.now() - window - 1, fresh.session.session_id))
    assert call(daemon, "session.find", tool_id="t", pid=later.pid, resume_key="k", resume_ended=True).session is None
    assert keyed(daemon, later, resume_ended=True).status == "created"


def test_a_process_keeps_one_deduplicated_session_per_tool_whatever_the_key(daemon, spawn_owner):
    owner = spawn_owner()
    plain = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid).session
    err = rejected("conflict", daemon, "session.get_or_create", tool_id="t", pid=owner.pid, resume_key="a")
    assert err.details == {"session_id": plain.session_id, "owner_pid": owner.pid}
    assert f"process {owner.pid} already owns live session {plain.session_id} of t without a resume key" in str(err)
    call(daemon, "session.end", session_id=plain.session_id)
    a = keyed(daemon, owner, "a").session
    err = rejected("conflict", daemon, "session.get_or_create", tool_id="t", pid=owner.pid, resume_key="b")
    assert "under resume key 'a'" in str(err) and err.details["session_id"] == a.session_id
    # Without dedup a process may hold more: a keyed session of its own besides.
    b = keyed(daemon, owner, "b", dedup=False)
    assert b.status == "created" and b.session.session_id != a.session_id
    assert keyed(daemon, owner, "b").status == "existing"
    dies(owner)
    # The key's session was made without dedup: resuming it checks nothing of the new owner's.
    successor = spawn_owner()
    call(daemon, "session.get_or_create", tool_id="t", pid=successor.pid)
    assert keyed(daemon, successor, "b").status == "resumed"
    err = rejected("conflict", daemon, "session.get_or_create", tool_id="t", pid=successor.pid, resume_key="a")
    assert err.details["owner_pid"] == successor.pid


# --- edits and delete ------------------------------------------------------------------------


def test_update_edits_title_tags_pin_archive_and_merges_metadata(daemon):
    s = call(daemon, "session.get_or_create", tool_id="t", metadata={"a": {"x": 1, "y": 2}, "b": 1}).session
    sid = s.session_id

    def update(**params: Any) -> Any:
        return call(daemon, "session.update", session_id=sid, **params)

    u = update(title="T", tags=["b", "a", "b"], pinned=True,
               metadata={"a": {"x": None, "z": 3}, "b": [1], "c": "n", "d": {"gone": None, "e": 1}, "f": None})
    assert (u.title, u.tags, u.pinned) == ("T", ["a", "b"], True)
    assert u.metadata == {"a": {"y": 2, "z": 3}, "b": [1], "c": "n", "d": {"e": 1}}
    assert update(metadata={"c": {"n": 1}}).metadata["c"] == {"n": 1}, "an object patched onto a string replaces it"
    u = update(metadata={"c": "n"})
    assert q.get(daemon.store.db, sid) == u
    other = call(daemon, "session.get_or_create", tool_id="t", dedup=False).session.session_id

    def listed(**where: Any) -> set[str]:
        return {s.session_id for s in call(daemon, "session.list", **where).sessions}

    assert listed(tag="a") == listed(pinned=True) == {sid} and listed(pinned=False) == {other}
    assert [r[0] for r in daemon.store.db.execute("SELECT tag FROM session_tags WHERE session_id = ?", (sid,))] == [
        "a", "b"]
    u = update(add_tags=["c"], remove_tags=["a"], metadata={"a": 5})
    assert (u.title, u.tags, u.pinned) == ("T", ["b", "c"], True)
    assert u.metadata == {"a": 5, "b": [1], "c": "n", "d": {"e": 1}}
    u = update(metadata={"only": True}, replace_metadata=True, title="", pinned=False)
    assert (u.title, u.metadata, u.pinned, u.tags) == (None, {"only": True}, False, ["b", "c"])
    u = update(tags=[])
    assert u.tags == [] and daemon.store.db.execute("SELECT tags FROM sessions WHERE session_id = ?",
                                                    (sid,)).fetchone() == (None,)
    archived = update(archived=True)
    assert archived.archived_at is not None and archived.ended_at is None
    assert update(archived=True).archived_at == archived.archived_at, "archiving again keeps the first time"
    assert update(title="kept").archived_at == archived.archived_at
    assert update(archived=False).archived_at is None
    assert rejected("invalid", daemon, "session.update", session_id=sid, replace_metadata=True).details == {
        "field": "metadata"}
    too_many = [f"t{i}" for i in range(MAX_TAGS)]
    assert rejected("too_large", daemon, "session.update", session_id=sid, tags=too_many,
                    add_tags=["one-more"]).details == {"field": "tags"}
    assert rejected("too_large", daemon, "session.update", session_id=sid, metadata={"x": "y" * 70_000})
    assert q.get(daemon.store.db, sid) == update()


def test_delete_reports_what_went_and_unwatches_a_live_sessions_owner(daemon, spawn_owner):
    owner = spawn_owner()
    s = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid).session
    sid = s.session_id
    call(daemon, "message.add", session_id=sid, messages=[{"role": "user", "content": "a"},
                                                          {"role": "user", "content": "b"}])
    call(daemon, "context.append", session_id=sid, events=[{"kind": "decision", "subject": "d"}] * 3)
    for text in ("m1", "m2", "m3", "m4"):
        call(daemon, "session_memory.add", session_id=sid, content=text)
    for title in ("x", "y", "z", "w", "v"):
        call(daemon, "task.create", session_id=sid, title=title)
    err = rejected("conflict", daemon, "session.delete", session_id=sid)
    assert err.details == {"session_id": sid, "live": True}
    deleted = call(daemon, "session.delete", session_id=sid, force=True)
    assert (deleted.session_id, deleted.was_live) == (sid, True)
    assert (deleted.messages, deleted.context_events, deleted.session_memories, deleted.tasks) == (2, 3, 4, 5)
    assert daemon.reaper.owners == {}, "a deleted session's owner is no longer watched"
    assert q.get(daemon.store.db, sid) is None
    kept = call(daemon, "session.get_or_create", tool_id="t", pid=owner.pid).session
    done = call(daemon, "session.end", session_id=kept.session_id)
    assert call(daemon, "session.delete", session_id=done.session_id).was_live is False


def test_a_resume_stages_one_session_resumed_event_and_each_outcome_is_counted(daemon, spawn_owner):
    published: list = []
    daemon.store.on_commit = published.extend
    first, second, third = spawn_owner(), spawn_owner(), spawn_owner()
    s = keyed(daemon, first).session
    assert keyed(daemon, first).status == "existing"
    dies(first)
    assert keyed(daemon, second).status == "resumed"
    call(daemon, "session.end", session_id=s.session_id)
    assert keyed(daemon, third, resume_ended=True).status == "resumed"
    daemon.store.flush()
    resumed = [e for e in published if e.kind == "session.resumed"]
    common = {"resume_key": "k"}
    assert [(e.session_id, e.tool_id, e.project_id, e.data) for e in resumed] == [
        (s.session_id, "t", s.project_id,
         {"owner_pid": second.pid, "previous_owner_pid": first.pid, "released": "died", **common}),
        (s.session_id, "t", s.project_id,
         {"owner_pid": third.pid, "previous_owner_pid": second.pid, "released": "ended", **common}),
    ]
    assert daemon.context.metrics.outcomes == {"t": {"created": 1, "existing": 1, "resumed": 2}}
    plain = call(daemon, "session.get_or_create", tool_id="u", pid=third.pid)
    again = call(daemon, "session.get_or_create", tool_id="u", pid=third.pid)
    assert again.session.session_id == plain.session.session_id
    assert daemon.context.metrics.outcomes["u"] == {"created": 1, "existing": 1, "resumed": 0}
