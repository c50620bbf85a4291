"""The exit watchers on their own, in this process: a watch is armed only for the very process
recorded (not a reused pid, a zombie or an exited one), holds one pidfd while armed and none
after, past its file-descriptor budget leaves owners to the sweep (with one warning), and the
polling fallback checks the whole identity."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

from omnid.identity import ProcessIdentity
from omnid.jobs import exits
from omnid.jobs.exits import PidfdWatcher, PollingWatcher, make_watcher
from tests.helpers import RUNNING, identity_of, no_free_fds, open_fds, run_loop_until, wait_for


@pytest.mark.parametrize("state, watched", [("running", True), ("exited", False), ("zombie", False), ("reused", False)])
def test_the_pidfd_watch_is_armed_only_for_the_recorded_process(loop, owners, state, watched):
    owner, _ = owners()[state]
    fired: list[ProcessIdentity] = []
    before = open_fds()
    watcher = PidfdWatcher(loop, fired.append)
    try:
        assert watcher.watch(owner) is watched
        assert watcher.running(owner) is watched
        assert open_fds() == before + 1 + watched, "one epoll over all the pidfds, and a pidfd per watch"
    finally:
        watcher.close()
    assert open_fds() == before and fired == []


@pytest.mark.parametrize("state", ["running", "exited", "zombie", "reused", "rebooted"])
def test_the_polling_watcher_checks_the_identity_and_never_claims_a_process_runs(owners, state):
    owner, cause = owners()[state]
    watcher = PollingWatcher()
    assert watcher.watch(owner) is (cause == RUNNING)
    assert watcher.running(owner) is False and watcher.watching(owner) is False


def test_past_its_fd_budget_the_pidfd_watcher_leaves_owners_to_the_sweep(loop, owners, caplog):
    made = owners()
    running, reused = made["running"][0], made["reused"][0]
    fired: list[ProcessIdentity] = []
    before = open_fds() + 1  # with the watcher's epoll
    watcher = PidfdWatcher(loop, fired.append, max_fds=1)
    try:
        assert watcher.watch(running) and watcher.watching(running) and watcher.fds == 1
        assert watcher.watch(running), "watched already: still running, no second pidfd"
        assert watcher.fds == 1 and not watcher.has_room
        with caplog.at_level(logging.WARNING, logger="omnid.reaper"):
            for _ in range(2):
                other = identity_of(made["rebooted"][0].pid)  # a running process of this boot
                assert watcher.watch(other) is True, "no room: a look at /proc says it runs"
                assert not watcher.watching(other) and not watcher.running(other)
                assert watcher.watch(reused) is False, "no room, and /proc says the pid is another process's"
        assert [r.levelno for r in caplog.records] == [logging.WARNING], "warned once, not at every owner"
        assert open_fds() == before + 1
    finally:
        watcher.close()
    assert fired == [] and open_fds() == before - 1


def test_linux_watches_exits_with_pidfds_and_out_of_descriptors_falls_back_to_the_sweep(loop):
    before = open_fds()
    watcher = make_watcher(loop, lambda _: None, 5)
    assert type(watcher) is PidfdWatcher and watcher.mode == "pidfd" and watcher.max_fds == 5
    assert watcher.fds == 0 and open_fds() == before + 1, "the probing pidfd is closed (+1: the epoll)"
    assert make_watcher(loop, lambda _: None).max_fds is None
    with no_free_fds():
        fallback = make_watcher(loop, lambda _: None, 5)
    assert type(fallback) is PollingWatcher and fallback.mode == "polling"


def test_an_owner_without_a_pidfd_is_left_to_the_sweep_with_a_warning(loop, caplog):
    """A thread's id names a process to /proc but gets no pidfd (ENOENT, not ESRCH)."""
    release = threading.Event()
    tids: list[int] = []
    thread = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), release.wait()))
    thread.start()
    try:
        run_loop_until(loop, lambda: tids)
        owner = identity_of(tids[0])
        watcher = PidfdWatcher(loop, lambda _: None)
        with caplog.at_level(logging.WARNING, logger="omnid.reaper"):
            assert watcher.watch(owner) is True, "it runs: a look at /proc says so"
        assert not watcher.watching(owner) and not watcher.running(owner) and watcher.fds == 0
        assert [r.getMessage() for r in caplog.records] == [
            f"cannot watch process {owner.pid} ([Errno 2] No such file or directory); "
            "the periodic sweep will notice its exit"
        ]
    finally:
        release.set()
        thread.join()
    wait_for(lambda: not os.path.exists(f"/proc/{owner.pid}"), what="the thread's exit")
    assert watcher.watch(owner) is False, "gone: no watch, and /proc says so"


def test_an_exit_unwatches_first_and_then_tells_once(loop, spawn_owner):
    proc = spawn_owner()
    owner = identity_of(proc.pid)
    told: list[tuple[ProcessIdentity, bool]] = []
    watcher = PidfdWatcher(loop, lambda who: told.append((who, watcher.watching(who))))
    before = open_fds()
    assert watcher.watch(owner) and watcher.running(owner)
    proc.kill()
    proc.wait()
    run_loop_until(loop, lambda: told)
    assert told == [(owner, False)] and watcher.fds == 0 and open_fds() == before
    assert not watcher.running(owner) and not watcher.watching(owner)
    loop.run_until_complete(asyncio.sleep(0))
    assert len(told) == 1, "told once"


@pytest.mark.parametrize("most_events", [64, 1])
def test_running_sees_an_exit_before_the_event_loop_handles_it(loop, spawn_owner, monkeypatch, most_events):
    """``running`` looks at the pidfds itself (one look at all of them): an owner killed a
    moment ago is not running though the loop has not run its exit callback yet, and others
    still are. With more exits pending than one look returns, it asks about that owner alone."""
    monkeypatch.setattr(exits, "_MOST_EVENTS", most_events)
    procs = [spawn_owner() for _ in range(3)]
    owners = [identity_of(proc.pid) for proc in procs]
    fired: list[ProcessIdentity] = []
    watcher = PidfdWatcher(loop, fired.append)
    try:
        assert all(watcher.watch(owner) for owner in owners)
        assert [watcher.running(owner) for owner in owners] == [True, True, True]
        for proc in procs[:2]:
            proc.kill()
            proc.wait()
        assert [watcher.running(owner) for owner in owners] == [False, False, True]
        assert fired == [] and watcher.fds == 3, "the loop has not handled the exits yet"
        run_loop_until(loop, lambda: len(fired) == 2)
        assert sorted(fired, key=owners.index) == owners[:2] and watcher.running(owners[2])
    finally:
        watcher.close()


def test_a_closed_pidfd_watcher_can_watch_again(loop, spawn_owner):
    """A resync may run while the daemon stops, after the reaper closed its watcher."""
    owner = identity_of(spawn_owner().pid)
    watcher = PidfdWatcher(loop, lambda _: None)
    watcher.close()
    before = open_fds()
    try:
        assert watcher.watch(owner) and watcher.running(owner)
        assert open_fds() == before + 2, "its pidfd, and an epoll over the pidfds again"
    finally:
        watcher.close()
    assert open_fds() == before


@pytest.mark.parametrize("free", [0, 1, 2])
def test_out_of_descriptors_a_watch_never_fails_and_leaves_what_it_cannot_watch_to_the_sweep(loop, owners, free):
    """EMFILE from pidfd_open, or from the look at /proc once the pidfd took the last
    descriptor: the owner is left to the sweep (as past the fd budget), and counted running
    unless /proc could still say otherwise (with none left, the sweep's next look decides)."""
    made = owners()
    running, reused = made["running"][0], made["reused"][0]
    watcher = PidfdWatcher(loop, lambda _: None)
    before = open_fds()
    try:
        with no_free_fds(leave=free):
            got = watcher.watch(reused), watcher.watch(running), watcher.watching(running)
        assert got == (free == 0, True, free == 2)
        assert watcher.fds == (free == 2) and open_fds() == before + (free == 2), "no pidfd left open but a watch"
        assert watcher.running(running) is (free == 2)
        assert watcher.watch(running) and watcher.watching(running), "with descriptors back, it gets its watch"
        assert watcher.watch(reused) is False
    finally:
        watcher.close()
    assert open_fds() == before - 1, "and its epoll closes with the watcher"
