"""The blocking client's transport promises against a real daemon: deadlines, calls cut
short, connections the daemon closed, and replies of every size.

Forks, fail-open and retries after a kill are covered in test_sessions.py and
test_crash.py; the idle close with a non-idempotent call in test_hostile.py.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading

import msgspec
import pytest

from omnid_client import Timeout
from omnid_client.protocol import HEADER, ResponseFrame
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("no_stray_daemons")


class Interrupted(Exception):
    pass


def test_a_frozen_daemon_times_out_and_the_connection_is_dropped(daemon):
    with daemon.client(timeout=0.3, connect_timeout=0.3) as c:
        c.get_or_create("frozen")
        outcome: dict = {}

        def call() -> None:
            try:
                outcome["result"] = c.get_or_create("frozen")
            except Exception as e:  # noqa: BLE001 - asserted below
                outcome["error"] = e

        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            t = threading.Thread(target=call)
            t.start()
            t.join(30)
            assert not t.is_alive(), "the call outlived its deadline"
            with daemon.client(timeout=0.3, connect_timeout=0.3) as newcomer, pytest.raises(Timeout):
                newcomer.status()  # connected (the kernel queues it), but no welcome comes
        finally:
            os.kill(daemon.pid, signal.SIGCONT)

        assert isinstance(outcome.get("error"), Timeout), outcome
        assert c._sock is None, "a timed-out connection was kept: its late reply would answer the next call"
        assert c.get_or_create("frozen").status == "existing"


def test_a_call_interrupted_while_waiting_does_not_leave_its_reply_for_the_next(daemon):
    """A signal handler raises while the call waits; the reply that arrives later must not be
    taken for the reply to the following call."""
    with daemon.client() as c, daemon.client() as observer:
        c.connect()

        def interrupt(signum, frame):
            raise Interrupted

        previous = signal.signal(signal.SIGALRM, interrupt)
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                c.get_or_create("interrupted")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.kill(daemon.pid, signal.SIGCONT)
        wait_for(lambda: observer.find("interrupted"), what="the interrupted request to be served")
        # Its reply, sent after the commit, is out: unread in c's socket if c kept the
        # connection, or else the daemon has replied and closed it (only the observer's is left).
        def replied() -> bool:
            if c._sock is not None:
                return bool(select.select([c._sock], [], [], 0)[0])
            return observer.status().connections == 1

        wait_for(replied, what="the interrupted request's reply to be sent")

        got = c.get_or_create("after")
        assert (got.status, got.session.tool_id) == ("created", "after")
        assert c.find("interrupted") is not None


_SIGPIPE_CHILD = """
import select, signal, sys
from omnid_client import Client
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as CLI tools that pipe into `head` do
with Client(autostart=False) as c:
    sid = c.get_or_create("sigpipe").session.session_id
    assert select.select([c._sock], [], [], 30)[0], "the daemon did not close the idle connection"
    print(c.add_message(sid, "user", "after the idle close").message_count, flush=True)
"""


def test_a_connection_closed_while_idle_does_not_kill_a_tool_that_restored_sigpipe(monkeypatch, start_daemon):
    monkeypatch.setenv("OMNID_CONNECTION_IDLE_TIMEOUT", "0.3")
    start_daemon()
    r = subprocess.run([sys.executable, "-c", _SIGPIPE_CHILD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.strip() == "1"


def test_replies_of_every_size_around_the_receive_buffer(client, tmp_path):
    """Reply frames just under, at and just over the client's receive buffer, and a few
    times its size, arrive whole."""
    from omnid_client._connection import REPLY_BUFFER

    workspace = str(tmp_path)
    client.put_memory("k", "", workspace=workspace)
    near = REPLY_BUFFER - _frame_size(client.get_memory("k", workspace=workspace))
    for size in [*range(near - 64, near + 64), 3 * REPLY_BUFFER + 1]:
        value = "v" * size
        client.put_memory("k", value, workspace=workspace)
        assert client.get_memory("k", workspace=workspace).value == value, size


def _frame_size(result) -> int:
    """Bytes of a reply frame carrying ``result``, header included (give or take the id)."""
    return HEADER.size + len(msgspec.msgpack.encode(ResponseFrame(1, result=result)))


def test_a_write_after_the_daemon_restarted_between_calls_is_sent_once(start_daemon):
    """The connection died with the old daemon; the write goes, once, to the new one."""
    first = start_daemon()
    with first.client() as c:
        sid = c.get_or_create("restarted").session.session_id
        assert first.stop() == 0
        start_daemon()
        assert c.add_message(sid, "user", "after the restart").message_count == 1
        assert [m.content for m in c.list_messages(sid).messages] == ["after the restart"]
