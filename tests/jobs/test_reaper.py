"""The reaper on its own, in this process: a real Store on a real SQLite file, a real event
loop, real pidfds and real owner processes (running, exited, zombie, or a live pid whose
recorded start differs, i.e. reused). Each way a dead owner is found is tested apart, since
each one alone stands between a dead owner and a session that never ends."""

from __future__ import annotations

import os
import sqlite3
import uuid
from typing import Callable, Iterator

import pytest

from omnid.identity import ProcessIdentity
from omnid.jobs.reaper import Reaper
from omnid.store import Store, sessions as q
from omnid_client import NotFound
from omnid_client.protocol import Session
from tests.helpers import RUNNING, identity_of, open_fds, run_loop_until


def add_session(store: Store, owner: ProcessIdentity, *, tool: str = "tool", dedup: bool = True) -> str:
    sid = str(uuid.uuid4())
    now = store.now()
    session = Session(sid, tool, None, "default", owner.pid, owner.start, owner.boot_id, None, {}, now, now)
    with store.write() as db:
        q.insert(db, session, dedup=dedup)
    return sid


def end_reason(store: Store, sid: str) -> str | None:
    session = q.get(store.db, sid)
    assert session is not None
    return session.end_reason


@pytest.fixture
def make_reaper(store, loop) -> Iterator[Callable[..., Reaper]]:
    made: list[Reaper] = []

    def make(sweep_interval: float = 3600.0) -> Reaper:
        made.append(Reaper(store, loop, sweep_interval=sweep_interval))
        return made[-1]

    yield make
    for reaper in made:
        reaper.stop()


@pytest.fixture
def reaper(make_reaper) -> Reaper:
    return make_reaper()


# --- sweeps: startup and `omnid reap` (the daemon's minute tick: tests/daemon/test_housekeeping.py) --


def test_the_startup_sweep_ends_exactly_the_sessions_whose_owner_is_gone(store, reaper, owners):
    made = owners()
    sids = {name: add_session(store, owner) for name, (owner, _) in made.items()}
    result = reaper.start()
    assert not result.dry_run
    assert {(s.session_id, s.cause) for s in result.sessions} == {
        (sids[name], cause) for name, (_, cause) in made.items() if cause != RUNNING
    }
    assert {s.owner_pid for s in result.sessions} == {owner.pid for owner, cause in made.values() if cause != RUNNING}
    assert all(s.tool_id == "tool" for s in result.sessions)
    assert reaper.last_reap is not None and (reaper.last_reap.trigger, reaper.last_reap.reaped) == ("startup", 4)
    for name, (_, cause) in made.items():
        assert end_reason(store, sids[name]) == (None if cause == RUNNING else "reaped"), name
    assert set(reaper.owners) == {made["running"][0]}, "only the running owner is watched"


@pytest.mark.parametrize("state", ["exited", "zombie", "reused", "rebooted"])
def test_a_manual_sweep_finds_a_dead_owner_that_no_exit_event_reported(store, reaper, owners, state):
    made = owners()
    reaper.start()
    keep = add_session(store, made["running"][0])
    reaper.track(keep, made["running"][0])
    owner, cause = made[state]
    sid = add_session(store, owner)  # recorded, never watched: only a sweep can find it

    dry = reaper.sweep(trigger="manual", dry_run=True)
    assert dry.dry_run and [(s.session_id, s.cause) for s in dry.sessions] == [(sid, cause)]
    assert end_reason(store, sid) is None, "a dry run ends nothing"
    assert reaper.last_reap.trigger == "startup", "a dry run is not a reap"

    real = reaper.sweep(trigger="manual")
    assert not real.dry_run and [(s.session_id, s.cause) for s in real.sessions] == [(sid, cause)]
    assert end_reason(store, sid) == "reaped" and end_reason(store, keep) is None
    assert (reaper.last_reap.trigger, reaper.last_reap.reaped) == ("manual", 1)
    assert reaper.sweep(trigger="manual").sessions == [], "reaped once only"


def test_sessions_of_one_dead_owner_are_all_ended_by_one_sweep(store, reaper, owners):
    told: list[tuple[str, int, int]] = []
    reaper.on_reaped = lambda via, nanos, sessions: told.append((via, nanos, sessions))
    owner, cause = owners()["reused"]
    reaper.sweep(trigger="sweep")  # the sweep before: reap latency is bounded by the time since it
    sids = {add_session(store, owner, tool=f"tool-{i}") for i in range(3)}
    assert reaper.sweep(trigger="sweep", dry_run=True).sessions and not told, "a dry run reaps nothing to tell"
    result = reaper.sweep(trigger="sweep")
    assert {s.session_id for s in result.sessions} == sids and {s.cause for s in result.sessions} == {cause}
    assert (reaper.last_reap.reaped, reaper.last_reap.trigger) == (3, "sweep")
    store.flush()
    assert [(via, sessions) for via, _, sessions in told] == [("sweep", 3)], "told once its end committed"
    assert 0 <= told[0][1] < 3600 * 10**9


# --- watches: exit events, and a pid reused before its watch is opened (tests/jobs/test_exits.py) --


def test_an_owners_exit_event_ends_its_sessions_and_closes_its_watch(store, reaper, spawn_owner):
    told: list[tuple[str, int, int]] = []
    reaper.on_reaped = lambda via, nanos, sessions: told.append((via, nanos, sessions))
    reaper.start()
    proc = spawn_owner()
    owner = identity_of(proc.pid)
    before = open_fds()
    sids = [add_session(store, owner, tool=f"t{i}") for i in range(2)]
    for sid in sids:
        reaper.track(sid, owner)
    assert open_fds() == before + 1, "one watch per owner, however many sessions"
    assert reaper.known_owner(proc.pid).identity == owner
    proc.kill()
    proc.wait()
    assert reaper.known_owner(proc.pid) is None, "a fired watch is not proof of life"
    run_loop_until(reaper.loop, lambda: all(end_reason(store, s) == "reaped" for s in sids))
    assert (reaper.last_reap.trigger, reaper.last_reap.reaped) == ("exit event", 2)
    assert reaper.owners == {} and open_fds() == before
    run_loop_until(reaper.loop, lambda: bool(told))
    assert [(via, sessions) for via, _, sessions in told] == [("event", 2)]
    assert 0 <= told[0][1] < 60 * 10**9, "from the exit event to the commit"


def test_a_pid_reused_before_its_watch_is_opened_is_not_watched(store, reaper, spawn_owner):
    reaper.start()
    recorded = identity_of(spawn_owner().pid, shift=1)
    before = open_fds()
    with pytest.raises(NotFound) as exc:
        reaper.track(add_session(store, recorded), recorded)
    assert exc.value.details == {"field": "pid"}
    assert reaper.owners == {} and reaper.known_owner(recorded.pid) is None
    assert open_fds() == before, "the pidfd opened for the check is closed again"


@pytest.mark.parametrize("state", ["exited", "zombie", "reused", "rebooted"])
def test_a_resync_does_not_watch_a_dead_owner_and_ends_its_sessions(store, reaper, owners, state):
    made = owners()
    reaper.start()
    owner, _ = made[state]
    sid = add_session(store, owner)  # e.g. imported, or left by a lost batch
    before = open_fds()
    reaper.resync()
    assert end_reason(store, sid) == "reaped"
    assert (reaper.last_reap.trigger, reaper.last_reap.reaped) == ("resync", 1)
    assert owner not in reaper.owners and open_fds() == before


def test_a_resync_watches_running_owners_and_forgets_ended_sessions(store, reaper, spawn_owner):
    reaper.start()
    owner = identity_of(spawn_owner().pid)
    sid = add_session(store, owner)
    before = open_fds()
    reaper.resync()
    assert reaper.owners == {owner: {sid}} and open_fds() == before + 1
    with store.write() as db:
        q.end(db, [sid], "ended", store.now())
    reaper.resync()
    assert reaper.owners == {} and open_fds() == before


# --- untracking: the watch goes with the owner's last session -------------------------------


def test_the_watch_stays_until_the_owners_last_session_is_untracked(store, reaper, spawn_owner):
    reaper.start()
    proc = spawn_owner()
    owner = identity_of(proc.pid)
    before = open_fds()
    a, b = add_session(store, owner, dedup=True), add_session(store, owner, dedup=False)
    reaper.track(a, owner)
    reaper.track(b, owner)
    reaper.untrack(a, owner)
    assert reaper.owners == {owner: {b}} and open_fds() == before + 1
    assert reaper.known_owner(proc.pid) is not None
    reaper.untrack(a, owner)  # twice: nothing more happens
    assert reaper.owners == {owner: {b}}
    reaper.untrack(b, owner)
    assert reaper.owners == {} and open_fds() == before
    assert reaper.known_owner(proc.pid) is None
    reaper.untrack(b, ProcessIdentity(proc.pid, owner.start + 1, owner.boot_id))  # unknown: ignored


def test_stop_closes_every_watch(store, make_reaper, spawn_owner):
    reaper = make_reaper()
    reaper.start()
    before = open_fds()
    for _ in range(3):
        owner = identity_of(spawn_owner().pid)
        reaper.track(add_session(store, owner), owner)
    assert open_fds() == before + 3
    reaper.stop()
    assert open_fds() == before - 1 and reaper.owners == {}, "every pidfd closed, and the epoll over them"


@pytest.fixture
def owner_died_while_locked(store, make_reaper, spawn_owner):
    """``make(sweep_interval)``: a reaper whose watched owner died while another connection
    holds the database's write lock, so ending its session failed and a retry is due.
    Returns (reaper, session id, release the lock)."""
    blockers: list[sqlite3.Connection] = []

    def make(sweep_interval: float) -> tuple[Reaper, str, Callable[[], None]]:
        reaper = make_reaper(sweep_interval=sweep_interval)
        reaper.start()
        proc = spawn_owner()
        owner = identity_of(proc.pid)
        sid = add_session(store, owner)
        reaper.track(sid, owner)
        assert reaper.known_owner(proc.pid).uid == os.getuid()
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blockers.append(blocker)
        store.db.execute("PRAGMA busy_timeout = 0")
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        proc.kill()
        proc.wait()
        run_loop_until(reaper.loop, lambda: reaper._retry.armed)
        assert end_reason(store, sid) is None
        return reaper, sid, blocker.rollback

    yield make
    for blocker in blockers:
        blocker.close()


def test_a_failed_end_is_retried_until_it_commits(store, owner_died_while_locked):
    """A dead owner's sessions that cannot be ended now (the database refuses writes) are
    ended by a retry a moment later, not left live until the next sweep."""
    reaper, sid, release = owner_died_while_locked(3600)
    release()
    run_loop_until(reaper.loop, lambda: end_reason(store, sid) == "reaped")


def test_retries_back_off_doubling_up_to_the_sweep_interval_and_reset_after_success(store, owner_died_while_locked):
    reaper, sid, release = owner_died_while_locked(3.0)
    delays = []
    for _ in range(4):  # each retry fails again while the lock is held, and waits longer
        delays.append(round(reaper._retry._handle.when() - reaper.loop.time(), 1))
        reaper._retry.cancel()
        reaper._retry_fired()
    assert delays == [1.0, 2.0, 3.0, 3.0]
    release()
    reaper._retry.cancel()
    reaper._retry_fired()
    assert end_reason(store, sid) == "reaped" and not reaper._retry.armed
    assert reaper._retry_delay == 1.0, "a retry that commits starts the next backoff afresh"


def test_a_new_sweep_interval_caps_the_retry_backoff_from_then_on(store, owner_died_while_locked):
    reaper, sid, release = owner_died_while_locked(3600.0)
    reaper.set_interval(2.0)
    assert reaper.sweep_interval == 2.0
    delays = []
    for _ in range(3):
        delays.append(round(reaper._retry._handle.when() - reaper.loop.time(), 1))
        reaper._retry.cancel()
        reaper._retry_fired()
    assert delays == [1.0, 2.0, 2.0]
    release()
    reaper._retry.cancel()
    reaper._retry_fired()
    assert end_reason(store, sid) == "reaped"


def test_what_a_reap_records_and_says(store, reaper, spawn_owner):
    reaper.start()
    proc = spawn_owner()
    owner = identity_of(proc.pid)
    sid = add_session(store, owner)
    reaper.resync()
    reaper.resync()  # again: the owner's sessions are kept, not replaced by nothing
    assert reaper.owners == {owner: {sid}}
    gone = identity_of(spawn_owner().pid, shift=1)
    with pytest.raises(NotFound, match=rf"^process {gone.pid} exited$"):
        reaper.track(add_session(store, gone, tool="other"), gone)
    before = store.now()
    proc.kill()
    proc.wait()
    run_loop_until(reaper.loop, lambda: end_reason(store, sid) == "reaped")
    assert before < reaper.last_reap.at <= store.now()


def test_a_fresh_reaper_has_reaped_nothing_and_spends_at_most_its_fd_budget(store, loop):
    reaper = Reaper(store, loop, sweep_interval=60.0, max_fds=3)
    try:
        assert reaper.last_reap is None and reaper.watcher.max_fds == 3 and reaper.mode == "pidfd"
    finally:
        reaper.stop()


def test_owners_left_to_the_sweep_get_an_exit_watch_once_there_is_room(store, loop, spawn_owner):
    reaper = Reaper(store, loop, sweep_interval=3600.0, max_fds=1)
    try:
        first, second = identity_of(spawn_owner().pid), identity_of(spawn_owner().pid)
        untracked = identity_of(spawn_owner().pid)
        one, two = add_session(store, first), add_session(store, second)
        add_session(store, untracked)  # in the database, never tracked by this reaper
        reaper.track(one, first)
        reaper.track(two, second)
        assert reaper.watcher.watching(first) and not reaper.watcher.watching(second)
        dead = spawn_owner()
        dead_owner = identity_of(dead.pid)
        gone = add_session(store, dead_owner)
        dead.kill()
        dead.wait()
        full = reaper.sweep(trigger="sweep")  # no room: nothing more is watched, the dead are still reaped
        assert [s.session_id for s in full.sessions] == [gone] and end_reason(store, gone) == "reaped"
        assert not reaper.watcher.watching(second) and reaper.watcher.fds == 1
        reaper.untrack(one, first)
        before = store.now()
        swept = reaper.sweep(trigger="sweep")
        assert swept.sessions == [] and before < swept.at == reaper.last_reap.at <= store.now()
        assert reaper.watcher.watching(second), "the owner left to the sweep has its exit watch now"
        assert not reaper.watcher.watching(untracked) and reaper.watcher.fds == 1
    finally:
        reaper.stop()


def test_a_lost_batch_rebuilds_the_watches_and_leaves_dead_owners_to_a_retry(tmp_path, loop, owners):
    flushes: list[Callable[[], None]] = []
    store = Store(tmp_path / "omnid.db", schedule=flushes.append)
    reaper = Reaper(store, loop, sweep_interval=3600.0)

    def commit() -> None:
        while flushes:
            flushes.pop()()

    try:
        made = owners()
        running, dead = made["running"][0], made["exited"][0]
        live, orphaned = add_session(store, running), add_session(store, dead)
        with store.write() as db:
            db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            db.execute("CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
        commit()
        with store.write() as db:
            db.execute("INSERT INTO child VALUES (42)")  # refused only by the COMMIT
        commit()
        assert not store.in_transaction and reaper.owners == {running: {live}}, "rebuilt from the database"
        assert reaper._retry.armed and end_reason(store, orphaned) is None, "ending now would fail the same way"
        reaper._retry.cancel()
        reaper._retry_fired()
        commit()
        assert end_reason(store, orphaned) == "reaped"
    finally:
        reaper.stop()
        store.close()
