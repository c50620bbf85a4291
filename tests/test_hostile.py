"""Hostile and careless peers against a real daemon: connections that never speak.

Other uids (refused at connect, and their pids refused as owners), garbage frames and the
handshake deadline are covered in test_daemon.py and test_sessions.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import DaemonProcess, wait_for
from test_daemon import Refusal, Wire, error_of, hello, request

from omnid_client import AsyncClient

pytestmark = pytest.mark.usefixtures("no_stray_daemons")


def daemon_with(monkeypatch, start_daemon, **env: str) -> DaemonProcess:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return start_daemon()


# --- connections that go quiet ---------------------------------------------------------


def test_silent_greeted_connection_is_closed_after_the_idle_timeout(monkeypatch, start_daemon):
    d = daemon_with(monkeypatch, start_daemon, OMNID_IDLE_TIMEOUT="1", OMNID_HANDSHAKE_TIMEOUT="0.5")
    with Wire(d.socket) as silent, Wire(d.socket) as busy, Wire(d.socket) as mute:
        for w in (silent, busy):
            w.send(hello())
            assert w.reply().error is None

        # The busy one speaks every 0.3 s for three idle timeouts and keeps its connection.
        for i in range(1, 11):
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
    d = daemon_with(monkeypatch, start_daemon, OMNID_IDLE_TIMEOUT="0.3")
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
    monkeypatch.setenv("OMNID_IDLE_TIMEOUT", value)
    refusal = Refusal(home)
    assert "OMNID_IDLE_TIMEOUT" in refusal.stderr and "positive number of seconds" in refusal.stderr
    refusal.assert_clean()
