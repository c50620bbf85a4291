"""The live-session cache (LiveLookups) and the session queries under it, on a real SQLite
file: what it answers without SQL (seen through SQLite's own statement trace), when it
forgets, and the coalesced last_activity bumps of reused sessions."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Callable, Iterator

import pytest

import omnid.store
from omnid.identity import ProcessIdentity
from omnid.store import Store, sessions as q
from omnid.store.events import ACTIVITY, Staged
from omnid_client.protocol import Session

BOOT = "boot-a"
OWNER = ProcessIdentity(4242, 777, BOOT)


def add(db: sqlite3.Connection, owner: ProcessIdentity = OWNER, *, tool: str = "tool", dedup: bool = True) -> Session:
    s = Session(str(uuid.uuid4()), tool, None, "default", owner.pid, owner.start, owner.boot_id, None, {}, 1.0, 1.0)
    q.insert(db, s, dedup=dedup)
    return s


class Traced:
    """The SELECTs a connection runs on the sessions table, from SQLite's statement trace."""

    def __init__(self, db: sqlite3.Connection):
        self.statements: list[str] = []
        db.set_trace_callback(self.statements.append)

    def selects(self) -> int:
        n = sum(1 for s in self.statements if s.lstrip().upper().startswith("SELECT") and "FROM sessions" in s)
        self.statements.clear()
        return n


@pytest.fixture
def cache(store) -> q.LiveLookups:
    return q.LiveLookups(store)


# --- find_live and LiveLookups -------------------------------------------------------------


@pytest.mark.parametrize("differ", ["tool", "pid", "start", "boot"])
def test_find_live_matches_tool_and_the_whole_owner_identity(store, differ):
    with store.write() as db:
        s = add(db)
    other = {
        "tool": ("other", OWNER),
        "pid": ("tool", ProcessIdentity(4243, 777, BOOT)),
        "start": ("tool", ProcessIdentity(4242, 778, BOOT)),
        "boot": ("tool", ProcessIdentity(4242, 777, "boot-b")),
    }[differ]
    assert q.find_live(store.db, "tool", OWNER) == s
    assert q.find_live(store.db, *other) is None


def test_find_live_skips_ended_and_non_dedup_sessions(store):
    with store.write() as db:
        add(db, dedup=False)
        ended = add(db)
        q.end(db, [ended.session_id], "ended", 2.0)
    assert q.find_live(store.db, "tool", OWNER) is None


def test_a_repeated_lookup_runs_no_sql_until_the_next_write(store, cache):
    with store.write() as db:
        s = add(db)
    trace = Traced(store.db)
    first = cache.find_live("tool", OWNER)
    assert first == s and trace.selects() == 1
    assert cache.find_live("tool", OWNER) is first and trace.selects() == 0
    with store.write():
        pass  # any write block, even an empty one, may have changed the row
    assert cache.find_live("tool", OWNER) == s and trace.selects() == 1
    assert cache.find_live("tool", OWNER) == s and trace.selects() == 0


def test_after_a_write_that_ends_the_session_it_is_not_found(store, cache):
    with store.write() as db:
        s = add(db)
    assert cache.find_live("tool", OWNER) == s
    with store.write() as db:
        q.end(db, [s.session_id], "ended", 2.0)
    assert cache.find_live("tool", OWNER) is None


def test_a_miss_is_not_remembered(store, cache):
    assert cache.find_live("tool", OWNER) is None
    with store.write() as db:
        s = add(db)
    assert cache.find_live("tool", OWNER) == s


def test_a_row_read_inside_an_open_transaction_is_not_kept(store, cache):
    trace = Traced(store.db)
    with pytest.raises(RuntimeError):
        with store.write() as db:
            add(db)
            assert cache.find_live("tool", OWNER) is not None  # seen inside, uncommitted
            raise RuntimeError("the batch is rolled back")
    trace.selects()
    assert cache.find_live("tool", OWNER) is None, "the rolled-back row must not be served"
    assert trace.selects() == 1


def test_a_row_read_in_a_transaction_begun_elsewhere_is_not_kept(store, cache):
    with store.write() as db:
        s = add(db)
    store.db.execute("BEGIN")
    try:
        assert cache.find_live("tool", OWNER) == s
        trace = Traced(store.db)
        assert cache.find_live("tool", OWNER) == s and trace.selects() == 1
    finally:
        store.db.execute("ROLLBACK")


def test_the_cache_keeps_at_most_limit_answers(store, cache):
    cache.LIMIT = 2
    owners = [ProcessIdentity(100 + i, 1, BOOT) for i in range(3)]
    with store.write() as db:
        for o in owners:
            add(db, o)
    for o in owners:
        cache.find_live("tool", o)
    trace = Traced(store.db)
    for o in owners[:2]:
        cache.find_live("tool", o)
    assert trace.selects() == 0, "the first LIMIT answers are kept"
    cache.find_live("tool", owners[2])
    assert trace.selects() == 1, "past LIMIT answers are not kept"


# --- the other session queries -----------------------------------------------------------------


def test_touch_moves_only_a_live_sessions_activity(store):
    with store.write() as db:
        live, ended = add(db), add(db, tool="other")
        q.end(db, [ended.session_id], "ended", 2.0)
        assert q.touch(db, live.session_id, 5.0) is True
        assert q.touch(db, ended.session_id, 6.0) is False
        assert q.touch(db, "no-such-session", 6.0) is False
    assert q.get(store.db, live.session_id).last_activity == 5.0
    assert q.get(store.db, ended.session_id).last_activity == 2.0


def test_end_ends_only_live_sessions_and_says_which(store):
    with store.write() as db:
        a, b = add(db), add(db, tool="b")
        assert q.end(db, [a.session_id], "ended", 3.0) == [a.session_id]
        assert q.end(db, [a.session_id, b.session_id, "none"], "reaped", 4.0) == [b.session_id]
    got = q.get(store.db, a.session_id)
    assert (got.ended_at, got.end_reason, got.last_activity) == (3.0, "ended", 3.0)


def test_ends_and_touches_stage_events_handed_on_once_committed(store):
    committed: list[Staged] = []
    store.on_commit = committed.extend
    with store.write() as db:
        db.execute("INSERT INTO projects VALUES ('p-1', '/w', 'w', NULL, 1.0, 1.0)")
        live = add(db)
        ended = Session(str(uuid.uuid4()), "other", "2.0", "agent", 4243, 5, BOOT, "/w", {}, 3.0, 3.0,
                        project_id="p-1")
        q.insert(db, ended, dedup=False)
    assert committed[1] == Staged("session.created", ended.session_id, "other", "p-1", {
        "tool_version": "2.0", "session_type": "agent", "owner_pid": 4243, "workspace": "/w", "started_at": 3.0,
    })
    committed.clear()
    with store.write() as db:
        assert q.end(db, [ended.session_id, "no-such-session"], "ended", 2.0) == [ended.session_id]
        q.touch(db, live.session_id, 5.0)
        q.touch(db, ended.session_id, 6.0)
        assert committed == []
    assert committed == [
        Staged("session.ended", ended.session_id, None, None, {"end_reason": "ended", "ended_at": 2.0}),
        Staged(ACTIVITY, live.session_id, None, None, {}),
    ]
    batches: list[list[Staged]] = []
    store.on_commit = batches.append
    with store.write() as db:
        q.touch(db, ended.session_id, 7.0)  # stages nothing
    assert batches == [], "a commit without events tells no one"


def test_totals_of_a_session_and_of_none(store):
    with store.write() as db:
        s = add(db)
    assert q.totals(store.db, s.session_id) == q.Totals(None, None, 0, 0, 0, 0, 0)
    assert q.totals(store.db, "no-such-session") is None


def test_known_totals_are_trusted_only_while_their_writers_wrote_last(store):
    known = q.KnownTotals(store)
    with store.write() as db:
        s, other = add(db), add(db, tool="other")
    trace = Traced(store.db)
    with store.write():
        read = known.get(s.session_id)
        assert read == q.Totals(None, None, 0, 0, 0, 0, 0) and trace.selects() == 1
        known.put(s.session_id, read._replace(message_count=1))  # (a writer would have written it too)
    with store.write():  # the writers of two sessions taking turns read neither row again
        assert known.get(s.session_id).message_count == 1 and trace.selects() == 0
        known.put(other.session_id, read._replace(message_count=7))
    with store.write():
        assert known.get(s.session_id).message_count == 1 and trace.selects() == 0
        assert known.get(other.session_id).message_count == 7 and trace.selects() == 0
    with store.write():
        pass  # any other write block, even an empty one, may have changed the rows
    with store.write():
        assert known.get(s.session_id).message_count == 0 and trace.selects() == 1
        known.put(s.session_id, read._replace(message_count=2))
    store.guard.lost = "the database file was deleted"  # so the next batch is lost at its commit
    with store.write():
        known.put(s.session_id, read._replace(message_count=3))
    store.guard.lost = None
    with store.write():
        assert known.get(s.session_id).message_count == 0 and trace.selects() == 1, "a lost batch empties them"


def test_live_owned_and_count_live_skip_ended_and_ownerless_sessions(store):
    with store.write() as db:
        owned = add(db)
        gone = add(db, tool="gone")
        q.end(db, [gone.session_id], "reaped", 2.0)
        ownerless = Session(str(uuid.uuid4()), "t", None, "default", None, None, None, None, {}, 1.0, 1.0)
        q.insert(db, ownerless, dedup=False)
    assert q.live_owned(store.db) == [(owned.session_id, "tool", OWNER)]
    with store.write() as db:
        q.end(db, [owned.session_id], "ended", 3.0)
        with_ino = Session(str(uuid.uuid4()), "t", None, "default", 4243, 9, BOOT, None, {}, 1.0, 1.0)
        q.insert(db, with_ino, dedup=True, owner_ino=991)
    [(_, _, owner)] = q.live_owned(store.db)
    assert (owner.pid, owner.ino) == (4243, 991), "the pidfd inode recorded, which same_process compares"
    assert q.count_live(store.db) == 2


# --- coalesced activity of reused sessions -----------------------------------------------------


@pytest.fixture
def timed(tmp_path) -> Iterator[tuple[Store, list, Callable[[], None]]]:
    """A store whose flushes and timers the test runs by hand, as the event loop would."""
    flushes: list[Callable[[], None]] = []
    timers: list[tuple[float, Callable[[], None]]] = []
    store = Store(tmp_path / "omnid.db", schedule=flushes.append, schedule_later=lambda d, fn: timers.append((d, fn)))

    def commit() -> None:
        while flushes:
            flushes.pop(0)()

    yield store, timers, commit
    store.close()


def stored_activity(store: Store, sid: str) -> float:
    db = sqlite3.connect(store.path)
    try:
        return db.execute("SELECT last_activity FROM sessions WHERE session_id = ?", (sid,)).fetchone()[0]
    finally:
        db.close()


def committed_session(store: Store, commit: Callable[[], None]) -> Session:
    """A live session, its batch committed."""
    with store.write() as db:
        s = add(db)
    commit()
    return s


def test_reuse_activity_rides_on_one_timer_and_then_commits(timed):
    store, timers, commit = timed
    s = committed_session(store, commit)
    store.note_activity(s.session_id, 5.0)
    store.note_activity(s.session_id, 6.0)
    assert [d for d, _ in timers] == [omnid.store.ACTIVITY_DELAY], "one timer for any number of bumps"
    assert store.pending_activity(s.session_id) == 6.0 and stored_activity(store, s.session_id) == 1.0
    committed: list[Staged] = []
    store.on_commit = committed.extend
    timers.pop()[1]()  # the delay is over
    commit()
    assert stored_activity(store, s.session_id) == 6.0 and store.pending_activity(s.session_id) is None
    assert committed == [Staged(ACTIVITY, s.session_id, None, None, {})]
    store.note_activity(s.session_id, 7.0)
    assert len(timers) == 1, "a new timer once the last one fired"


def test_reuse_activity_during_an_open_batch_rides_on_its_commit(timed):
    store, timers, commit = timed
    with store.write() as db:
        s = add(db)
        store.note_activity(s.session_id, 5.0)
    assert timers == [], "the open batch's commit takes it along"
    commit()
    assert stored_activity(store, s.session_id) == 5.0


def test_a_timer_with_nothing_pending_writes_nothing(timed):
    store, timers, commit = timed
    s = committed_session(store, commit)
    store.note_activity(s.session_id, 6.0)
    assert len(timers) == 1
    with store.write():
        pass
    commit()  # this batch took the bump along
    assert stored_activity(store, s.session_id) == 6.0
    writes = store.writes
    timers.pop()[1]()
    assert store.writes == writes and not store.in_transaction


def test_project_activity_gets_a_new_timer_after_each_one_fires(timed):
    store, timers, commit = timed
    with store.write() as db:
        db.execute("INSERT INTO projects VALUES ('p', '/p', 'p', NULL, 1.0, 1.0)")
    commit()
    for at in (5.0, 6.0):
        store.note_project_activity("p", at)
        assert len(timers) == 1
        timers.pop()[1]()
        commit()
        assert store.db.execute("SELECT last_activity FROM projects").fetchone() == (at,)


def test_close_writes_reuse_activity_still_waiting_for_its_timer(timed):
    store, timers, commit = timed
    s = committed_session(store, commit)
    store.note_activity(s.session_id, 5.0)
    assert len(timers) == 1 and not store.in_transaction
    store.close()
    assert stored_activity(store, s.session_id) == 5.0


def test_a_flush_scheduled_before_close_does_nothing_after_it(tmp_path):
    flushes: list[Callable[[], None]] = []
    store = Store(tmp_path / "omnid.db", schedule=flushes.append)
    with store.write() as db:
        s = add(db)
    store.close()  # commits the batch itself
    flushes.pop()()  # the event loop runs the flush it had been given
    db = sqlite3.connect(store.path)
    try:
        assert q.get(db, s.session_id) is not None
    finally:
        db.close()
