"""The event stream: events.subscribe on a real daemon, Client.events / AsyncClient.events,
``omnid events``; ordering, rollback, resume after kill -9, slow and many subscribers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from omnid.store import Store, stage
from omnid_client import AsyncClient, Client, Invalid, StorageError, TooLarge
from omnid_client._events import _Frames, event_of, subscribed
from omnid_client.paths import daemon_paths
from omnid_client.protocol import Event
from tests.helpers import hello, request, wait_for

pytestmark = pytest.mark.usefixtures("no_stray_daemons")


class Collector:
    """Client.events(...) followed on a thread; ``events`` fills up as they arrive. It
    replays from the start (since=0) unless told otherwise, so no event is missed while
    the thread connects. It ends when its daemon stops, unless it reconnects (``reconnect=True``):
    then it ends at the first event after ``stop`` is set."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("since", 0)
        kwargs.setdefault("reconnect", False)
        _COLLECTORS.append(self)
        self.events: list[Event] = []
        self.errors: list[BaseException] = []
        self.stop = False
        self._stream = Client(autostart=False).events(**kwargs)
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                self.events.append(event)
                if self.stop:
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def wait(self, n: int, timeout: float = 20.0) -> list[Event]:
        wait_for(lambda: len(self.events) >= n or self.errors, timeout=timeout, what=f"{n} events")
        assert not self.errors, self.errors
        return self.events

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


_COLLECTORS: list[Collector] = []


@pytest.fixture(autouse=True)
def collectors_end() -> Iterator[None]:
    """Torn down after the daemons: every Collector of the test has ended, so none goes on
    to follow (and count as a connection of) a later test's daemon."""
    yield
    leftover = _COLLECTORS[:]
    _COLLECTORS.clear()
    for collector in leftover:
        collector.thread.join(timeout=15)
    assert not [c for c in leftover if c.thread.is_alive()], "a Collector outlived its test's daemon"


def raw_subscriber(
    sock_path: Path, params: dict[str, Any], rcvbuf: int | None = None
) -> tuple[socket.socket, _Frames, int]:
    """A raw connection that has subscribed: (socket, its frames, the head it was told)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(str(sock_path))
    s.sendall(hello() + request(1, "events.subscribe", params))
    frames = _Frames(s)
    frames.next()  # welcome
    return s, frames, subscribed(frames.next()).head


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def test_events_arrive_in_commit_order_with_contiguous_sequence_numbers(daemon, tmp_path):
    watcher = Collector()
    writers = 4

    def write(n: int) -> None:
        with daemon.client() as c:
            sid = c.get_or_create(f"tool-{n}", workspace=str(tmp_path), dedup=False).session.session_id
            for i in range(25):
                c.add_message(sid, "user", f"m{i}")
            c.end(sid)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: watcher.kinds().count("session.ended") == writers, what="every session's end")
    events = watcher.events
    assert seqs(events) == list(range(events[0].seq, events[0].seq + len(events))), "gaps or disorder"
    by_session: dict[str, list[Event]] = {}
    for e in events:
        by_session.setdefault(e.session_id or "", []).append(e)
    for evs in by_session.values():
        kinds = [e.kind for e in evs if e.kind != "session.activity"]
        assert kinds[0] == "session.created" and kinds[-1] == "session.ended", kinds
        counts = [e.data["message_count"] for e in evs if e.kind == "message.added"]
        assert counts == list(range(1, 26))
        assert all(e.tool_id == evs[0].tool_id for e in evs)
        assert "contents" not in evs[1].data  # not asked for
        ended = [e for e in evs if e.kind == "session.ended"][0]
        assert ended.data["end_reason"] == "ended"
        # Activity summaries: at most one a second per session.
        times = [e.at for e in evs if e.kind == "session.activity"]
        assert all(b - a >= 0.99 for a, b in zip(times, times[1:], strict=False)), times


def test_filters_content_and_reaped_sessions(daemon, tmp_path, spawn_owner):
    owner = spawn_owner()
    with daemon.client() as c:
        keep = c.get_or_create("keep", workspace=str(tmp_path), pid=owner.pid).session
        other = c.get_or_create("other", workspace=str(tmp_path), dedup=False).session
        only_keep = Collector(sessions=[keep.session_id], kinds=["message", "session.ended"], include_content=True)
        by_tool = Collector(tools=["other"], kinds=["message.added"])
        everything = Collector(kinds=["session", "memory"])
        # Contents are only sent live (never replayed): write once all three follow.
        wait_for(lambda: c.status().subscribers == 3, what="three subscribers")
        c.add_message(other.session_id, "user", "not for you")
        c.add_message(keep.session_id, "assistant", "hello there", tokens_used=7)
        c.put_memory("k", {"v": 1}, workspace=str(tmp_path))
        c.delete_memory("k", workspace=str(tmp_path))
        owner.kill()
        owner.wait()
        got = only_keep.wait(2)
        assert [e.kind for e in got[:2]] == ["message.added", "session.ended"]
        assert got[0].data["contents"] == ["hello there"] and got[0].data["total_tokens"] == 7
        assert got[1].data["end_reason"] == "reaped"
        assert [e.data["message_count"] for e in by_tool.wait(1)] == [1]
        wait_for(lambda: "session.ended" in everything.kinds(), what="the reap in the unfiltered stream")
        kinds = everything.kinds()
        assert kinds.index("memory.put") < kinds.index("memory.deleted") < kinds.index("session.ended")
        assert "message.added" not in kinds
        assert by_tool.kinds() == ["message.added"]


def test_bad_subscriptions_get_typed_errors(daemon):
    with pytest.raises(Invalid, match="unknown event kind 'bogus'"):
        next(Client(autostart=False).events(kinds=["bogus"]))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(daemon.socket))
    s.sendall(hello() + request(1, "events.subscribe", {}) + request(2, "events.subscribe", {"since": -1}))
    frames = _Frames(s)
    frames.next()
    subscribed(frames.next())
    with pytest.raises(Invalid):
        subscribed(frames.next())
    s.close()
    with daemon.client() as c:
        assert c.status().pid == daemon.pid  # still serving


@pytest.mark.parametrize("params, kind, field, words", [
    ({"since": -1}, Invalid, "since", "since must be an integer of at least 0"),
    ({"sessions": ["bad"]}, Invalid, "sessions", "sessions[0] must be a session id: a lowercase UUID"),
    ({"kinds": "session"}, Invalid, "kinds", "kinds must be a list of at most 32 items, each text"),
    ({"tools": ["x"] * 65}, TooLarge, "tools", "tools must be a list of at most 64 items"),
], ids=["since", "sessions", "kinds", "tools"])
def test_bad_subscribe_parameters_read_as_sentences_naming_the_field(daemon, params, kind, field, words):
    """As every other method's: the field and what it allows, not msgspec's own text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(hello() + request(1, "events.subscribe", params))
        frames = _Frames(s)
        frames.next()
        with pytest.raises(kind) as refused:
            subscribed(frames.next())
    err = refused.value
    assert str(err).startswith(words) and "Expected" not in str(err) and "$." not in str(err), str(err)
    assert (err.code, err.field, err.details["method"]) == (kind.code, field, "events.subscribe")


def test_random_subscribe_parameters_get_a_subscription_or_a_typed_error(daemon):
    from hypothesis import HealthCheck, given, settings, strategies as st

    from omnid_client import OmnidError

    values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    )
    fields = st.fixed_dictionaries(
        {}, optional={k: values for k in ("kinds", "tools", "projects", "sessions", "since", "include_content")}
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(params=fields | values)
    def check(params: Any) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(daemon.socket))
        try:
            s.sendall(hello() + request(1, "events.subscribe", params))
            frames = _Frames(s)
            frames.next()
            try:
                subscribed(frames.next())
            except OmnidError as e:
                assert e.code in {"invalid", "too_large"}, e
        finally:
            s.close()

    check()
    with daemon.client() as c:
        assert c.status().pid == daemon.pid


def test_no_event_for_a_rolled_back_write(tmp_path):
    """Two requests share a transaction, each in its savepoint: the one that fails is undone
    and so is its event; only the committed one is told, and only after COMMIT."""
    soon: list = []
    store = Store(tmp_path / "omnid.db", schedule=soon.append, schedule_later=lambda d, f: None)
    told: list[tuple[str, bool]] = []
    store.on_commit = lambda events: told.extend((e.kind, store.in_transaction) for e in events)
    with store.write() as db:
        stage(db, "memory.put", key="kept")
    with pytest.raises(sqlite3.IntegrityError):
        with store.write() as db:
            stage(db, "memory.deleted", key="undone")
            db.execute("INSERT INTO sessions (session_id) VALUES (NULL)")
    assert told == []  # nothing before the commit
    for fn in soon:
        fn()
    assert told == [("memory.put", False)]
    # A transaction rolled back whole tells nothing.
    with pytest.raises(sqlite3.IntegrityError):
        with store.write() as db:
            stage(db, "memory.put", key="alone")
            db.execute("INSERT INTO sessions (session_id) VALUES (NULL)")
    store.flush()
    assert told == [("memory.put", False)]
    store.close()


def test_resume_after_kill_9(home, start_daemon, tmp_path):
    d = start_daemon()
    watcher = Collector(reconnect=True)
    with d.client() as c:
        sid = c.get_or_create("before", workspace=str(tmp_path), dedup=False).session.session_id
        for i in range(5):
            c.add_message(sid, "user", f"before {i}")
    watcher.wait(6)
    d.kill()
    # Committed after the watcher's last look but before it reconnects: replayed from the log.
    d2 = start_daemon()
    with d2.client() as c:
        c.add_message(sid, "user", "after restart")
        c.end(sid)
    wait_for(lambda: "session.ended" in watcher.kinds(), timeout=20, what="events after the restart")
    events = [e for e in watcher.events]
    numbers = seqs(events)
    assert numbers == sorted(set(numbers)), "a repeated or reordered event"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    counts = [e.data["message_count"] for e in events if e.kind == "message.added"]
    assert counts == [1, 2, 3, 4, 5, 6]
    # A new subscriber can replay the whole history from disk, across the restart.
    replay = Collector(since=0)
    assert seqs(replay.wait(numbers[-1]))[: numbers[-1]] == list(range(1, numbers[-1] + 1))
    watcher.stop = True
    with d2.client() as c:
        c.get_or_create("last", workspace=str(tmp_path), dedup=False)  # the event it stops at
    watcher.thread.join(15)


def test_slow_subscriber_with_10000_events_in_flight(home, start_daemon, tmp_path):
    d = start_daemon()  # the default buffer: 1 MiB per subscriber
    with d.client() as c:
        sid = c.get_or_create("busy", workspace=str(tmp_path), dedup=False).session.session_id
    fast = Collector(kinds=["message.added"])
    params = {"kinds": ["message.added"], "include_content": True}
    slow, slow_frames, head = raw_subscriber(d.socket, params, rcvbuf=4096)
    n = 10_000
    body = "x" * 600  # the slow one asked for contents: 10,000 of them far exceed its buffer
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as w:
        w.settimeout(60)
        w.connect(str(d.socket))
        w.sendall(hello())
        out = b"".join(
            request(i, "message.add", {"session_id": sid, "messages": [{"role": "user", "content": body}]})
            for i in range(1, n + 1)
        )
        sender = threading.Thread(target=w.sendall, args=(out,))
        sender.start()
        reader = _Frames(w)
        for _ in range(n + 1):  # welcome + n replies: the daemon never waited for the slow one
            reader.next()
        sender.join()
    # The others were served while the slow one read nothing.
    with d.client() as c:
        assert c.status().connections >= 2
    got = fast.wait(n, timeout=60)
    assert "gap" not in [e.kind for e in got[:n]], "a subscriber that keeps up missed events"
    assert [e.data["message_count"] for e in got[:n]] == list(range(1, n + 1))
    # Now the slow one reads: what fit in its buffer, then one gap with the resume point.
    received: list[Event] = []
    while True:
        event = event_of(slow_frames.next())
        received.append(event)
        if event.kind == "gap":
            break
    gap = received[-1]
    delivered = received[:-1]
    assert 0 < len(delivered) < n
    assert [e.data["message_count"] for e in delivered] == list(range(1, len(delivered) + 1))
    assert all(e.data["contents"] == [body] for e in delivered)
    assert gap.data["reason"] == "slow" and gap.data["resume"] >= delivered[-1].seq > head
    assert gap.data["from_seq"] == gap.data["resume"] + 1 and gap.seq == gap.data["to_seq"]
    slow.close()
    # Resuming from that point fills in everything missed, from the on-disk log.
    resumed = Collector(since=gap.data["resume"], kinds=["message.added"])
    rest = resumed.wait(n - len(delivered), timeout=60)
    assert [e.data["message_count"] for e in delivered + rest[: n - len(delivered)]] == list(range(1, n + 1))
    fast.stop = resumed.stop = True
    with d.client() as c:
        c.end(sid)


def test_fifty_subscribers(daemon, tmp_path):
    subs = [raw_subscriber(daemon.socket, {"kinds": ["session"]}) for _ in range(50)]
    with daemon.client() as c:
        sids = [c.get_or_create("many", workspace=str(tmp_path), dedup=False).session.session_id for _ in range(20)]
        for sid in sids:
            c.end(sid)
    for s, frames, _head in subs:
        events = [event_of(frames.next()) for _ in range(40)]
        assert seqs(events) == sorted(seqs(events)) and len(set(seqs(events))) == 40
        assert [e.session_id for e in events if e.kind == "session.created"] == sids
        assert [e.session_id for e in events if e.kind == "session.ended"] == sids
        s.close()


def test_async_client_follows_and_resumes(home, start_daemon, tmp_path):
    d = start_daemon()

    async def main() -> list[Event]:
        got: list[Event] = []
        stream = AsyncClient(autostart=False).events(kinds=["session"])
        async def consume() -> None:
            async for event in stream:
                got.append(event)
                if len(got) == 2:
                    return
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        async with AsyncClient(autostart=False) as c:
            sid = (await c.get_or_create("async", workspace=str(tmp_path), dedup=False)).session.session_id
        while not got:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(d.kill)
        await asyncio.to_thread(start_daemon)
        async with AsyncClient(autostart=False) as c:
            await c.end(sid)
        await asyncio.wait_for(task, 30)
        return got

    got = asyncio.run(main())
    assert [e.kind for e in got] == ["session.created", "session.ended"]
    assert got[1].seq == got[0].seq + 1


def test_omnid_events_cli_prints_json_lines_and_text(daemon, tmp_path):
    with daemon.client() as c:
        sid = c.get_or_create("cli", workspace=str(tmp_path), dedup=False).session.session_id
        c.add_message(sid, "user", "hi")
        c.end(sid)
    out = subprocess.run(
        [sys.executable, "-m", "omnid", "events", "--json", "--since", "0", "--kind", "session.created",
         "--kind", "session.ended", "-n", "2"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["kind"] for e in lines] == ["session.created", "session.ended"]
    assert lines[0]["session_id"] == sid and lines[1]["data"]["end_reason"] == "ended"
    text = subprocess.run(
        [sys.executable, "-m", "omnid", "events", "--since", "0", "-n", "1"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "session.created" in text and "cli" in text and sid[:8] in text


def test_config_reload_is_an_event(home, daemon):
    watcher = Collector(kinds=["config"])
    (home / "config.toml").write_text("event_buffer = 65536\n")
    got = watcher.wait(1)
    assert got[0].kind == "config.reloaded" and got[0].data["changed"] == ["event_buffer"]
    watcher.stop = True


def test_full_disk_tells_storage_error_and_no_event_for_the_failed_write(home, tmp_path):
    from tests.daemon.test_bad_disk import OffDiskLog, fill, mount, unmount

    mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "omnid-test", str(home))
    try:
        d = OffDiskLog(home, tmp_path / "omnid.log").start()
        try:
            watcher = Collector()
            with d.client() as c:
                c.get_or_create("fits", workspace=str(tmp_path), dedup=False)
                watcher.wait(1)
                filler = fill(home)
                refused = 0
                for i in range(300):
                    try:
                        c.get_or_create(f"full-{i}", metadata={"pad": "x" * 4000}, dedup=False)
                    except StorageError:
                        refused += 1
                assert refused
                wait_for(lambda: "storage.error" in watcher.kinds(), what="the storage error event")
                created = [e.tool_id for e in watcher.events if e.kind == "session.created"]
                with d.client() as c2:
                    live = {s.tool_id for s in c2.list_sessions(status="live", limit=1000).sessions}
                assert set(created) == live, "an event for a write that was rolled back"
                filler.unlink()
            watcher.stop = True
        finally:
            assert d.stop() == 0
    finally:
        unmount(home)


def test_refused_writes_are_told_once_as_storage_errors(home, start_daemon, tmp_path):
    """The guard's refusals (over the quota; the database file gone) are storage.error events,
    one as writes start being refused, not one per refused write."""
    quota = 1 << 20
    (home / "config.toml").write_text(f"max_database_bytes = {quota}\n")
    d = start_daemon()
    watcher = Collector(kinds=["storage", "config"])
    with d.client() as c:
        sid = c.get_or_create("filler", workspace=str(tmp_path), dedup=False).session.session_id
        refusals: list[str] = []

        def refused_for(reason: str) -> bool:
            try:
                c.add_message(sid, "user", "q" * 32768)
            except StorageError as e:
                refusals.append(e.reason)
            return refusals.count(reason) >= 3

        wait_for(lambda: refused_for("quota"), timeout=30, what="three refusals over the quota")
        os.unlink(d.paths.database)
        wait_for(lambda: refused_for("database_gone"), timeout=30, what="three refusals once the file is gone")
        # Something told after them: once it arrives, every storage error before it has too.
        (home / "config.toml").write_text(f"max_database_bytes = {quota}\nevent_buffer = 65536\n")
        wait_for(lambda: "config.reloaded" in watcher.kinds(), what="the config reload after the refusals")
    storage = [e for e in watcher.events if e.kind == "storage.error"]
    assert [e.data["reason"] for e in storage] == ["quota", "database_gone"]
    assert "max_database_bytes" in storage[0].data["message"] and "deleted" in storage[1].data["message"]
    watcher.stop = True
    assert d.stop() == 0


def test_a_link_planted_as_the_event_log_is_not_followed(home, start_daemon, tmp_path):
    """events.jsonl is opened with safefile.open_private: a symlink there is refused (events
    are kept in memory only, and said so in the log), and its target is never written."""
    target = tmp_path / "not-omnid.txt"
    target.write_text("someone else's file\n")
    state_dir = daemon_paths().state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "events.jsonl").symlink_to(target)
    d = start_daemon()
    watcher = Collector(kinds=["session"])
    with d.client() as c:
        c.get_or_create("linked", workspace=str(tmp_path), dedup=False)
    assert watcher.wait(1)[0].tool_id == "linked"  # still told, from memory
    assert target.read_text() == "someone else's file\n"
    assert (state_dir / "events.jsonl").is_symlink()
    assert "is a symlink" in d.log_text() and "kept in memory only" in d.log_text()
    watcher.stop = True
    assert d.stop() == 0
