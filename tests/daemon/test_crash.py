"""kill -9 of the daemon under load, twenty times: nothing acknowledged is lost, the
database stays intact, and clients recover by themselves.

Who restarts the daemon: the clients. The test never starts one; each writer's Client
has ``autostart`` on, so the first call of a trial starts the daemon and, after each
kill, the first writer to find it gone starts the next (the spawn lock makes that exactly
one). An idempotent call cut off by the kill is resent by the client on the new daemon;
a non-idempotent one (message.add, context.append) is not: it raises Unavailable, and
the caller cannot know whether it was stored, so it must never be stored twice.

test_daemon.py covers a single kill -9 with acknowledged sessions and the stale socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from omnid_client import AsyncClient, Client, OmnidError, Unavailable
from omnid_client.protocol import ContextEvent
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.usefixtures("no_stray_daemons"),
    pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to see requests queued at the daemon"),
]

TRIALS = 20
WRITERS = 16


def writer_client() -> Client:
    # Generous deadlines: a call may have to wait for a daemon to be started.
    return Client(autostart=True, start_timeout=30, connect_timeout=10, timeout=30)


@dataclass
class Ledger:
    """What one writer was told: every acknowledged write, and the writes whose fate it
    cannot know (Unavailable from a non-idempotent call cut off by the kill)."""

    sessions: dict[str, set[str]] = field(default_factory=dict)  # tool id -> session ids acknowledged
    messages: dict[int, tuple[str, str]] = field(default_factory=dict)  # message id -> (session, content)
    decisions: dict[str, str] = field(default_factory=dict)  # subject -> session
    unsure: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # anything else: a test failure
    in_call: str | None = None
    acks: int = 0


class Writer(threading.Thread):
    """get_or_create (idempotent, dedup) on a new tool every fourth step, then one message
    and one context event for that session; records every reply."""

    def __init__(self, n: int, trial: int, ledger: Ledger, stop: threading.Event):
        super().__init__(daemon=True)
        self.n, self.trial, self.ledger, self.stop = n, trial, ledger, stop

    def run(self) -> None:
        led = self.ledger
        with writer_client() as c:
            step = 0
            while not self.stop.is_set():
                tool = f"w{self.n}-t{self.trial}-{step // 4}"
                text = f"w{self.n}-t{self.trial}-{step}"
                step += 1
                try:
                    led.in_call = "session.get_or_create"
                    sid = c.get_or_create(tool).session.session_id
                except OmnidError as e:
                    led.failures.append(f"get_or_create({tool}): {e!r}")
                    return
                finally:
                    led.in_call = None
                led.sessions.setdefault(tool, set()).add(sid)
                led.acks += 1
                for method in ("message.add", "context.append"):
                    led.in_call = method
                    try:
                        if method == "message.add":
                            added = c.add_message(sid, "user", text)
                            led.messages[added.message_ids[0]] = (sid, text)
                        else:
                            c.append_context(sid, [ContextEvent("decision", text)])
                            led.decisions[text] = sid
                        led.acks += 1
                    except Unavailable:
                        led.unsure.append(f"{method} {text}")
                    except OmnidError as e:
                        led.failures.append(f"{method}({text}): {e!r}")
                        return
                    finally:
                        led.in_call = None


def daemon_pid() -> int:
    with Client(autostart=False) as c:
        return c.connect().pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)


def test_twenty_kill_9s_under_sixteen_writers_lose_nothing_acknowledged(home):
    seed = int(os.environ.get("OMNID_CRASH_SEED", time.time_ns()))
    print(f"\nkill moments from seed {seed} (set OMNID_CRASH_SEED to repeat them)")
    rng = random.Random(seed)
    ledgers: list[Ledger] = []
    in_flight_at_kill: Counter[str] = Counter()
    killed: list[int] = []

    for trial in range(TRIALS):
        stop = threading.Event()
        trial_ledgers = [Ledger() for _ in range(WRITERS)]
        writers = [Writer(n, trial, led, stop) for n, led in enumerate(trial_ledgers)]
        for w in writers:
            w.start()
        try:
            wait_for(lambda: all(led.acks >= 3 for led in trial_ledgers) or _failed(trial_ledgers),
                     timeout=60, what=f"trial {trial}: every writer to get replies")
            pid = daemon_pid()
            # A random moment of load (a random number of replies more), then a kill while
            # every writer's request waits unread: each of them is cut off by the kill.
            goal = sum(led.acks for led in trial_ledgers) + rng.randint(1, 200)
            wait_for(lambda: sum(led.acks for led in trial_ledgers) >= goal or _failed(trial_ledgers),
                     timeout=60, what=f"trial {trial}: more replies")
            in_flight = freeze_with_every_writer_waiting(pid, trial_ledgers)
            in_flight_at_kill.update(in_flight)
            unsure_before = sum(len(led.unsure) for led in trial_ledgers)
            before = [led.acks for led in trial_ledgers]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_for(lambda: gone(pid), what=f"daemon {pid} to die")
            # Recovered: every writer has been answered again, by a new daemon.
            wait_for(
                lambda: all(led.acks >= b + 3 for led, b in zip(trial_ledgers, before, strict=True))
                or _failed(trial_ledgers),
                timeout=60, what=f"trial {trial}: every writer to recover",
            )
        finally:
            stop.set()
            for w in writers:
                w.join(60)
        assert not any(w.is_alive() for w in writers), "a writer hung"
        failures = [f for led in trial_ledgers for f in led.failures]
        assert not failures, f"trial {trial}: calls failed that the client should have recovered: {failures[:5]}"
        cut_off = in_flight["message.add"] + in_flight["context.append"]
        assert sum(len(led.unsure) for led in trial_ledgers) - unsure_before == cut_off, (
            f"trial {trial}: {cut_off} non-idempotent call(s) cut off by the kill, each must raise Unavailable"
        )
        ledgers.extend(trial_ledgers)
        assert daemon_pid() not in killed
        assert_nothing_lost(home, ledgers)

    unsure = [u for led in ledgers for u in led.unsure]
    acked = sum(len(led.messages) + len(led.decisions) + len(led.sessions) for led in ledgers)
    print(f"\n{TRIALS} kills; calls in flight at the kills: {dict(in_flight_at_kill)}; "
          f"{acked} acknowledged writes; {len(unsure)} non-idempotent calls cut off (Unavailable)")
    # Every kill cut off both kinds of call (freeze_with_every_writer_waiting sees to it).
    assert in_flight_at_kill["session.get_or_create"] >= TRIALS
    assert len(unsure) >= TRIALS

    with Client(autostart=False) as c:
        last = c.connect().pid
        c.shutdown()
    wait_for(lambda: gone(last), what="the last daemon to stop")
    log = (home / "omnid.log").read_text()
    assert log.count("removed stale socket") == TRIALS, "some daemon did not start over a killed one's socket"
    assert "Traceback" not in log, log[-5000:]
    with contextlib.closing(sqlite3.connect(home / "omnid.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _failed(ledgers: list[Ledger]) -> bool:
    return any(led.failures for led in ledgers)


def unix_connections() -> list[tuple[int, str, str, str]]:
    """(bytes received and not yet read, own inode, peer inode, owner) of every Unix stream
    connection, from ``ss`` (iproute2)."""
    out = subprocess.run(["ss", "-xpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "u_str":
            rows.append((int(f[2]), f[5], f[7], " ".join(f[8:])))
    return rows


def queued_connections(pid: int) -> int:
    """Connections of process ``pid`` holding bytes it has not read yet."""
    return sum(1 for unread, _, _, owner in unix_connections() if f"pid={pid}," in owner and unread > 0)


def replies_unread(daemon_pid: int) -> int:
    """Bytes the daemon sent that its clients have not read yet."""
    rows = unix_connections()
    peers = {peer for _, _, peer, owner in rows if f"pid={daemon_pid}," in owner}
    return sum(unread for unread, inode, _, _ in rows if inode in peers)


def freeze_with_every_writer_waiting(pid: int, ledgers: list[Ledger]) -> Counter[str]:
    """Stop the daemon (SIGSTOP) at a moment when every writer waits for a reply that cannot
    come (no reply sent before the stop is left unread, and no writer moves on), among them
    both an idempotent and a non-idempotent call; returns the calls waiting."""
    deadline = time.monotonic() + 60
    while True:
        os.kill(pid, signal.SIGSTOP)
        seen: list = []

        def settled() -> bool:
            state = [(led.in_call, led.acks) for led in ledgers]
            still = bool(seen) and state == seen[-1] and all(call for call, _ in state)
            seen.append(state)
            return _failed(ledgers) or (still and replies_unread(pid) == 0 and state == [
                (led.in_call, led.acks) for led in ledgers
            ])

        wait_for(settled, timeout=30, interval=0.02, what="every writer to wait at the stopped daemon")
        calls = Counter(call for call, _ in seen[-1])
        if _failed(ledgers) or (calls["session.get_or_create"] and calls["message.add"] + calls["context.append"]):
            return calls
        assert time.monotonic() < deadline, f"the calls waiting were always of one kind: {calls}"
        os.kill(pid, signal.SIGCONT)
        acks = [led.acks for led in ledgers]
        wait_for(
            lambda: all(led.acks > a for led, a in zip(ledgers, acks, strict=True)), what="every writer to move on"
        )


def assert_nothing_lost(home: Path, ledgers: list[Ledger]) -> None:
    """Every write any writer was told about, in the file (read-only, beside the running
    daemon) and through a client; at most one copy of anything a client could not know."""
    sessions = {tool: sids for led in ledgers for tool, sids in led.sessions.items()}
    messages = {mid: v for led in ledgers for mid, v in led.messages.items()}
    decisions = {subject: sid for led in ledgers for subject, sid in led.decisions.items()}

    # A resent get_or_create found the session the lost reply was about: one per tool.
    split = {tool: sids for tool, sids in sessions.items() if len(sids) > 1}
    assert not split, f"get_or_create answered with different sessions for one tool: {list(split.items())[:3]}"

    with contextlib.closing(read_only(home / "omnid.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored_sessions = dict(db.execute("SELECT session_id, tool_id FROM sessions WHERE ended_at IS NULL"))
        stored_messages = {
            mid: (sid, text) for mid, sid, text in db.execute("SELECT message_id, session_id, content FROM messages")
        }
        stored_decisions = dict(db.execute("SELECT subject, session_id FROM context_events WHERE kind = 'decision'"))
        twice = db.execute(
            "SELECT content FROM messages GROUP BY content HAVING count(*) > 1 UNION ALL "
            "SELECT subject FROM context_events GROUP BY subject HAVING count(*) > 1"
        ).fetchall()
        per_tool = db.execute("SELECT tool_id FROM sessions GROUP BY tool_id HAVING count(*) > 1").fetchall()

    lost = [(tool, sid) for tool, sids in sessions.items() for sid in sids if stored_sessions.get(sid) != tool]
    assert not lost, f"{len(lost)} acknowledged session(s) lost or ended, e.g. {lost[:3]}"
    lost = [(mid, v) for mid, v in messages.items() if stored_messages.get(mid) != v]
    assert not lost, f"{len(lost)} acknowledged message(s) lost, e.g. {lost[:3]}"
    lost = [(s, sid) for s, sid in decisions.items() if stored_decisions.get(s) != sid]
    assert not lost, f"{len(lost)} acknowledged context event(s) lost, e.g. {lost[:3]}"
    assert not twice, f"stored twice (a non-idempotent call was resent): {twice[:3]}"
    assert not per_tool, f"two sessions for one tool (a get_or_create was not deduplicated): {per_tool[:3]}"

    with Client(autostart=False) as c:
        served, cursor = set(), None
        while True:
            page = c.list_sessions(status="live", limit=1000, cursor=cursor)
            served.update(s.session_id for s in page.sessions)
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        missing = [sid for sids in sessions.values() for sid in sids if sid not in served]
        assert not missing, f"{len(missing)} acknowledged session(s) not served after the restart"
        by_session: dict[str, set[str]] = {}
        for sid, text in messages.values():
            by_session.setdefault(sid, set()).add(text)
        for sid in random.sample(sorted(by_session), min(50, len(by_session))):
            listed = {m.content for m in c.list_messages(sid, limit=1000).messages}
            assert by_session[sid] <= listed, f"session {sid}: acknowledged messages not served"


# --- one cut-off call, deterministically -------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_call_cut_off_by_a_kill_is_resent_only_if_idempotent(home, flavour):
    """The daemon is stopped (SIGSTOP) so a request sits unread in its socket, then killed:
    get_or_create is resent to a new daemon (started by the client) and succeeds; message.add
    raises Unavailable and the message was never stored."""
    with writer_client() as c:
        sid = c.get_or_create("cut-off").session.session_id

    def cut_off(method):
        """Call ``method(client)`` on a connected client whose daemon is frozen, then kill it."""
        with writer_client() as c:
            pid = c.connect().pid  # starting one if the last was killed
        connected, frozen = threading.Event(), threading.Event()
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = (call_sync if flavour == "sync" else call_async)(method, connected, frozen)
            except OmnidError as e:
                outcome["error"] = e

        t = threading.Thread(target=run)
        t.start()
        assert connected.wait(30)
        os.kill(pid, signal.SIGSTOP)
        frozen.set()
        _wait_until_queued(pid)
        os.kill(pid, signal.SIGKILL)
        t.join(60)
        assert not t.is_alive()
        wait_for(lambda: gone(pid), what="the frozen daemon to die")
        return outcome

    lost = cut_off(lambda fresh: fresh.add_message(sid, "user", "cut off"))
    assert isinstance(lost.get("error"), Unavailable), lost

    resent = cut_off(lambda fresh: fresh.get_or_create("cut-off"))
    assert "error" not in resent, resent
    assert resent["result"].session.session_id == sid and resent["result"].status == "existing"

    with writer_client() as c:
        assert c.get(sid).message_count == 0, "the cut-off message was stored (or resent)"
        assert c.list_messages(sid).messages == []
        c.shutdown()


def call_sync(method, connected: threading.Event, frozen: threading.Event):
    with writer_client() as fresh:
        fresh.connect()
        connected.set()
        frozen.wait()
        return method(fresh)


def call_async(method, connected: threading.Event, frozen: threading.Event):
    async def go():
        async with AsyncClient(autostart=True, start_timeout=30, connect_timeout=10, timeout=30) as fresh:
            await fresh.connect()
            connected.set()
            await asyncio.to_thread(frozen.wait)
            return await method(fresh)

    return asyncio.run(go())


def _wait_until_queued(pid: int) -> None:
    """Until the frozen daemon holds unread bytes on a connection: the request just sent."""
    wait_for(lambda: queued_connections(pid) > 0, what=f"a request queued at the frozen daemon {pid}")
