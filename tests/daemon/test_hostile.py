"""Hostile and careless peers against a real daemon: connections that never speak, pids
that are not the caller's to claim, and a thousand connections at once.

Other uids (refused at connect, and their pids refused as owners), garbage frames and the
handshake deadline are covered in test_daemon.py and test_sessions.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time

import psutil
import pytest
from click.testing import CliRunner

from omnid.cli import main
from omnid_client import AsyncClient
from tests.helpers import NOBODY, DaemonProcess, Refusal, Wire, error_of, fd_targets, hello, request, wait_for

pytestmark = pytest.mark.usefixtures("no_stray_daemons")


def daemon_with(monkeypatch, start_daemon, **env: str) -> DaemonProcess:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return start_daemon()


# --- connections that go quiet ---------------------------------------------------------


def test_silent_greeted_connection_is_closed_after_the_idle_timeout(monkeypatch, start_daemon):
    d = daemon_with(monkeypatch, start_daemon, OMNID_CONNECTION_IDLE_TIMEOUT="2", OMNID_HANDSHAKE_TIMEOUT="0.5")
    with Wire(d.socket) as silent, Wire(d.socket) as busy, Wire(d.socket) as mute:
        for w in (silent, busy):
            w.send(hello())
            assert w.reply().error is None

        # The busy one speaks every 0.3 s for two idle timeouts and keeps its connection.
        for i in range(1, 15):
            busy.send(request(i, "daemon.status"))
            resp = busy.reply()
            assert resp is not None, f"a connection in use was closed after {i - 1} requests"
            assert resp.id == i and resp.error is None
            time.sleep(0.3)

        # The silent one is closed without an error frame (one would arrive as a stray reply
        # to the client's next request); the one that never said hello gets the handshake error.
        assert silent.reply() is None
        code, message = error_of(mute.reply())
        assert code == "protocol" and "no hello within 0.5s" in message
        assert mute.reply() is None
    assert "Traceback" not in d.log_text()


def test_client_reconnects_after_an_idle_close_without_losing_a_write(monkeypatch, start_daemon):
    d = daemon_with(monkeypatch, start_daemon, OMNID_CONNECTION_IDLE_TIMEOUT="0.3")
    with d.client() as c:
        sid = c.get_or_create("idle-tool").session.session_id
        wait_for(lambda: _only_listener(d), what="the idle close")

        # message.add is not idempotent: a client that sent it on the dead connection could
        # only raise Unavailable. It must notice the close first and reconnect.
        added = c.add_message(sid, "user", "after a nap")
        assert added.message_count == 1
        assert [m.content for m in c.list_messages(sid).messages] == ["after a nap"]

    async def async_side() -> int:
        async with AsyncClient(autostart=False) as ac:
            await ac.heartbeat(sid)
            await asyncio.to_thread(wait_for, lambda: _only_listener(d), what="the idle close")
            return (await ac.add_message(sid, "assistant", "me too")).message_count

    assert asyncio.run(async_side()) == 2


def _only_listener(d: DaemonProcess) -> bool:
    """The daemon holds no connection but the one asking this."""
    with d.client() as probe:
        return probe.status().connections == 1


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf"])
def test_a_bad_timeout_setting_refuses_to_start_and_says_which(home, monkeypatch, value):
    monkeypatch.setenv("OMNID_CONNECTION_IDLE_TIMEOUT", value)
    refusal = Refusal(home)
    assert "OMNID_CONNECTION_IDLE_TIMEOUT" in refusal.stderr and "positive number of seconds" in refusal.stderr
    refusal.assert_clean()


# --- owners that are not the caller's to claim ------------------------------------------

_CLAIMER = """
import json, os, subprocess, sys
from omnid_client import Client, OmnidError
grandparent, sibling, stranger = (int(a) for a in sys.argv[1:4])
child = subprocess.Popen(["sleep", "600"])
claims = {"self": None, "parent": os.getppid(), "grandparent": grandparent,
          "sibling": sibling, "own child": child.pid, "other user": stranger}
out = {}
with Client(autostart=False) as c:
    for strict in (True, False):
        for name, pid in claims.items():
            try:
                s = c.get_or_create(f"claim-{strict}-{name.replace(' ', '-')}", pid=pid,
                                    owner_must_be_ancestor=strict).session
                out[f"{strict} {name}"] = ["ok", s.owner_pid]
            except OmnidError as e:
                out[f"{strict} {name}"] = [e.code, str(e)]
child.kill()
print(json.dumps({"me": os.getpid(), "parent": os.getppid(), "claims": out}))
"""


def test_acting_for_an_ancestor_accepts_only_the_caller_and_its_ancestors(daemon, spawn_owner):
    """A real tree: this test -> sh -> python claimer (which starts its own child); a
    sibling of sh and a process of another user are started by this test."""
    sibling, stranger = spawn_owner(), spawn_owner(user=NOBODY)
    # "; true" keeps sh from exec'ing python in its own place: sh stays the parent.
    script = '"$0" -c "$1" "$2" "$3" "$4"; true'
    argv = [sys.executable, _CLAIMER, str(os.getpid()), str(sibling.pid), str(stranger.pid)]
    r = subprocess.run(["sh", "-c", script, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    claims = out["claims"]

    for name, pid in (("self", out["me"]), ("parent", out["parent"]), ("grandparent", os.getpid())):
        assert claims[f"True {name}"] == ["ok", pid], name
    for name in ("sibling", "own child"):
        code, message = claims[f"True {name}"]
        assert code == "permission" and "neither the caller" in message, (name, message)
    code, message = claims["True other user"]
    assert code == "permission" and f"uid {NOBODY}" in message

    # Without the flag any process of the caller's uid may own a session, as before.
    assert claims["False sibling"] == ["ok", sibling.pid]
    assert claims["False own child"][0] == "ok"
    assert claims["False other user"][0] == "permission"


def test_session_start_refuses_a_parent_pid_that_is_no_longer_its_parent(daemon, client, spawn_owner, monkeypatch):
    """``omnid session start`` binds to its parent. If the parent died and its pid went to
    another process, the pid it read is no ancestor any more: that process is refused."""
    impostor = spawn_owner()
    monkeypatch.setattr("omnid.cli.sessions.os.getppid", lambda: impostor.pid)

    result = CliRunner().invoke(main, ["session", "start", "--tool", "hook"], catch_exceptions=False)

    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("omnid: permission: ") and "ancestors" in result.stderr
    assert client.list_sessions(tool_id="hook").sessions == []
    # An explicit --pid is the user's choice and may name any of their processes.
    result = CliRunner().invoke(main, ["session", "start", "--tool", "hook", "--pid", str(impostor.pid)])
    assert result.exit_code == 0, result.stderr
    assert client.get(result.stdout.strip()).owner_pid == impostor.pid


# --- a crowd ---------------------------------------------------------------------------------

CROWD = 1000


@pytest.fixture
def many_fds():
    """This process may open as many files as its hard limit allows (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * CROWD + 100:
        pytest.skip(f"the hard limit on open files is {hard}; {CROWD} connections need more")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def daemon_fds(d: DaemonProcess) -> int:
    """The daemon's fds other than regular files: the sockets, pidfds, pipes and epolls that
    connections and watches hold. Files are left out because they come and go on their own:
    the copy of the running code, taken in the background after start, opens each file it
    copies."""
    return sum(not target.startswith("/") for target in fd_targets(d.pid))


def test_a_thousand_connections_at_once_are_all_served(daemon, many_fds):
    with daemon.client() as c:
        c.get_or_create("warm-up")  # this process is watched from now on: one pidfd
        baseline = daemon_fds(daemon)

        async def crowd() -> tuple[list, int]:
            everyone_in = asyncio.Event()
            arrived = 0
            peak = 0

            async def member(i: int):
                nonlocal arrived, peak
                async with AsyncClient(autostart=False, connect_timeout=60, timeout=60) as ac:
                    try:
                        await ac.connect()
                    finally:
                        arrived += 1
                        if arrived == CROWD:
                            # Everyone holds an open, greeted connection now (or has failed).
                            peak = (await asyncio.to_thread(c.status)).connections
                            everyone_in.set()
                    await everyone_in.wait()
                    return (await ac.get_or_create(f"crowd-{i}")).session.tool_id

            results = await asyncio.gather(*(member(i) for i in range(CROWD)), return_exceptions=True)
            return results, peak

        results, peak = asyncio.run(crowd())

        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)} of {CROWD} failed, e.g. {failures[:3]!r}"
        assert sorted(results) == sorted(f"crowd-{i}" for i in range(CROWD))
        assert peak == CROWD + 1
        assert c.status().live_sessions == CROWD + 1
        wait_for(lambda: c.status().connections == 1, what="the crowd's connections to close")
        wait_for(lambda: daemon_fds(daemon) <= baseline, what=f"the daemon's fds to return to {baseline}")
    assert daemon.running


def test_a_crowd_larger_than_the_daemons_fd_limit_waits_its_turn(home, start_daemon, spawn_owner, many_fds):
    """With room for about a hundred connections the daemon takes what it can, leaves the rest
    in the listen backlog until fds free up, and neither crashes nor fails a request."""
    limit = 128
    d = start_daemon(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    owners = [spawn_owner() for _ in range(8)]
    baseline = daemon_fds(d)

    async def crowd() -> list:
        async def member(i: int):
            async with AsyncClient(autostart=False, connect_timeout=120, timeout=120) as ac:
                # Some need a new watch on an owner process (a pidfd: one more fd) just when
                # the daemon has none left.
                pid = owners[i % len(owners)].pid if i % 50 == 0 else None
                return (await ac.get_or_create(f"queued-{i}", pid=pid)).session.tool_id

        return await asyncio.gather(*(member(i) for i in range(CROWD)), return_exceptions=True)

    results = asyncio.run(crowd())

    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of {CROWD} failed, e.g. {failures[:3]!r}\n{d.log_text()[-3000:]}"
    with d.client() as c:
        assert c.status().live_sessions == CROWD
        wait_for(lambda: c.status().connections == 1, what="the crowd's connections to close")
    assert psutil.Process(d.pid).rlimit(psutil.RLIMIT_NOFILE) == (limit, limit)
    wait_for(lambda: daemon_fds(d) <= baseline + len(owners), what="the daemon's fds to return")
    log = d.log_text()
    assert "not accepting new connections for now" in log, "the crowd never reached the fd limit"
    assert "Traceback" not in log, log[-5000:]
