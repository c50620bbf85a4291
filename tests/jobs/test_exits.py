"""The exit watchers on their own, in this process: a watch is armed only for the very process
recorded (not a reused pid, a zombie or an exited one), holds one pidfd while armed and none
after, past its file-descriptor budget leaves owners to the sweep (with one warning), and the
polling fallback checks the whole identity."""

from __future__ import annotations

import logging

import pytest

from omnid.identity import ProcessIdentity
from omnid.jobs.exits import PidfdWatcher, PollingWatcher
from tests.helpers import RUNNING, identity_of, open_fds


@pytest.mark.parametrize("state, watched", [("running", True), ("exited", False), ("zombie", False), ("reused", False)])
def test_the_pidfd_watch_is_armed_only_for_the_recorded_process(loop, owners, state, watched):
    owner, _ = owners()[state]
    fired: list[ProcessIdentity] = []
    watcher = PidfdWatcher(loop, fired.append)
    before = open_fds()
    try:
        assert watcher.watch(owner) is watched
        assert watcher.running(owner) is watched
        assert open_fds() == before + watched
    finally:
        watcher.close()
    assert open_fds() == before and fired == []


@pytest.mark.parametrize("state", ["running", "exited", "zombie", "reused", "rebooted"])
def test_the_polling_watcher_checks_the_identity_and_never_claims_a_process_runs(loop, owners, state):
    owner, cause = owners()[state]
    watcher = PollingWatcher(loop, lambda _: None)
    assert watcher.watch(owner) is (cause == RUNNING)
    assert watcher.running(owner) is False


def test_past_its_fd_budget_the_pidfd_watcher_leaves_owners_to_the_sweep(loop, owners, caplog):
    made = owners()
    running, reused = made["running"][0], made["reused"][0]
    fired: list[ProcessIdentity] = []
    watcher = PidfdWatcher(loop, fired.append, max_fds=1)
    before = open_fds()
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
    assert fired == [] and open_fds() == before
