"""What a same-user client can make the daemon spend, against a real daemon: reply bytes
queued for a client that never reads, file descriptors held by owner watches, and disk
(the storage quota); and a database file deleted or replaced under a running daemon.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import threading
import time

import msgspec
import psutil
import pytest

from omnid_client import StorageError
from omnid_client.protocol import MessagePage, NewMessage, Task
from tests.helpers import DaemonProcess, Refusal, Wire, hello, omnid_json, omnid_ok, request, wait_for

pytestmark = pytest.mark.usefixtures("no_stray_daemons")


def rss(d: DaemonProcess) -> int:
    return psutil.Process(d.pid).memory_info().rss


# --- a client that pipelines and never reads ------------------------------------------

REPLY_BYTES = 32 * 1024
PIPELINED = 10000
RSS_GROWTH_LIMIT = 48 << 20
"""Well above what the README promises per connection (a few MiB), far below what
``PIPELINED`` replies of ``REPLY_BYTES`` would take if the daemon queued them all (~300 MiB)."""


def test_a_client_that_pipelines_and_never_reads_cannot_bloat_or_stall_the_daemon(daemon, spawn_owner):
    owner = spawn_owner()
    with daemon.client() as c:
        sid = c.get_or_create("pipeliner", pid=owner.pid).session.session_id
        c.add_messages(sid, [NewMessage("user", "x" * REPLY_BYTES)])
        baseline = rss(daemon)

        # Reads with large replies, and every tenth request a write, whose reply waits for
        # its commit: the replies must still come back in order.
        data = bytearray(hello())
        for i in range(1, PIPELINED + 1):
            if i % 10:
                data += request(i, "message.list", {"session_id": sid})
            else:
                data += request(i, "task.create", {"session_id": sid, "title": f"t{i}"})

        with Wire(daemon.socket, timeout=120) as w:
            sender = threading.Thread(target=w.send, args=(bytes(data),), daemon=True)
            sender.start()
            # The daemon has stopped reading, so the sender is stuck in sendall; meanwhile
            # the daemon's memory stays flat and other clients are served.
            peak = baseline
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                peak = max(peak, rss(daemon))
                assert peak - baseline < RSS_GROWTH_LIMIT, (
                    f"daemon RSS grew by {(peak - baseline) >> 20} MiB for one client that does not read"
                )
                time.sleep(0.02)
            assert sender.is_alive(), "the daemon read every request without the client reading a reply"
            with daemon.client(timeout=10) as other:
                started = time.monotonic()
                assert other.get_or_create("bystander").session.tool_id == "bystander"
                assert other.status().connections == 3
                waited = time.monotonic() - started
            assert waited < 5.0, f"another client waited {waited:.1f}s"

            # Now the client reads: every reply arrives, in order, complete.
            assert w.reply().id == 0
            for i in range(1, PIPELINED + 1):
                resp = w.reply()
                assert resp is not None and resp.error is None, (i, resp and resp.error)
                assert resp.id == i
                if i % 10:
                    page = msgspec.msgpack.decode(resp.result, type=MessagePage)
                    assert len(page.messages[0].content) == REPLY_BYTES
                else:
                    assert msgspec.msgpack.decode(resp.result, type=Task).title == f"t{i}"
                peak = max(peak, rss(daemon)) if i % 200 == 0 else peak
            sender.join(10)
            assert not sender.is_alive()
        assert peak - baseline < RSS_GROWTH_LIMIT
        assert len(c.list_tasks(session_id=sid, limit=1000).tasks) == PIPELINED // 10
    assert "Traceback" not in daemon.log_text()


# --- more live owners than file descriptors --------------------------------------------

FD_LIMIT = 64
OWNERS = 100


def test_more_live_owners_than_fds_neither_fail_calls_nor_lock_clients_out(monkeypatch, start_daemon, spawn_owner):
    """Past its pidfd budget the daemon watches further owners with the sweep instead: every
    get_or_create succeeds, new clients still get in, and every owner's death is reaped."""
    monkeypatch.setenv("OMNID_SWEEP_INTERVAL", "1")
    d = start_daemon(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)))
    owners = [spawn_owner() for _ in range(OWNERS)]
    with d.client(timeout=10) as c:
        sids = {c.get_or_create(f"owned-{i}", pid=p.pid).session.session_id: p for i, p in enumerate(owners)}
        assert len(sids) == OWNERS
        st = c.status()
        assert st.watched_processes == OWNERS
        assert st.pidfd_budget is not None and 0 < st.pidfd_budget < OWNERS
        assert st.pidfd_watches == st.pidfd_budget  # the rest are left to the sweep

        # New clients still connect, several at once.
        others = [d.client(timeout=10) for _ in range(5)]
        try:
            for other in others:
                assert other.status().live_sessions == OWNERS
        finally:
            for other in others:
                other.close()

        for p in owners:
            p.kill()
            p.wait()
        wait_for(lambda: c.status().live_sessions == 0, timeout=30, what="every owner's sessions to be reaped")
        for sid in sids:
            assert c.get(sid).end_reason == "reaped"
        assert c.status().pidfd_watches == 0
    assert psutil.Process(d.pid).rlimit(psutil.RLIMIT_NOFILE) == (FD_LIMIT, FD_LIMIT)
    log = d.log_text()
    assert "sweep reaped" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_the_soft_fd_limit_is_raised_to_the_hard_one(start_daemon):
    d = start_daemon(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, 4 * FD_LIMIT)))
    assert psutil.Process(d.pid).rlimit(psutil.RLIMIT_NOFILE) == (4 * FD_LIMIT, 4 * FD_LIMIT)
    with d.client() as c:
        assert c.status().pidfd_budget > (4 * FD_LIMIT - FD_LIMIT) // 2


def test_a_bad_sweep_interval_override_refuses_to_start_and_says_which(home, monkeypatch):
    monkeypatch.setenv("OMNID_SWEEP_INTERVAL", "0")
    refusal = Refusal(home)
    assert "OMNID_SWEEP_INTERVAL" in refusal.stderr and "positive number of seconds" in refusal.stderr
    refusal.assert_clean()


# --- the storage quota -------------------------------------------------------------------

QUOTA = 1 << 20
CHUNK = "q" * (32 * 1024)


def test_past_the_storage_quota_writes_are_refused_and_reads_and_ends_go_on(home, start_daemon, spawn_owner):
    (home / "config.toml").write_text(f"max_database_bytes = {QUOTA}\n")
    d = start_daemon()
    owner = spawn_owner()
    with d.client() as c:
        sid = c.get_or_create("filler", pid=owner.pid).session.session_id
        other = c.get_or_create("other", pid=owner.pid).session.session_id
        room = QUOTA - c.status().database_used_bytes
        assert room > 4 * len(CHUNK)
        acked = 0
        with pytest.raises(StorageError) as refused:
            while acked < 4 * QUOTA // len(CHUNK):
                c.add_message(sid, "user", CHUNK)
                acked += 1
        assert refused.value.reason == "quota", refused.value
        assert refused.value.details["quota_bytes"] == QUOTA
        assert "max_database_bytes" in str(refused.value)
        assert acked * len(CHUNK) >= room // 4  # it let the database fill up first (data is stored with indexes)

        # Writes that add data are refused, typed...
        for attempt in (
            lambda: c.add_message(sid, "user", "one more"),
            lambda: c.create_task(sid, "a task"),
            lambda: c.put_memory("k", "v", workspace=str(home)),
            lambda: c.get_or_create("newcomer", pid=owner.pid),
        ):
            with pytest.raises(StorageError) as err:
                attempt()
            assert err.value.reason == "quota"
        # ...while reads, reuse of a live session, heartbeats and ends go on.
        assert len(c.list_messages(sid, limit=1000).messages) == acked
        assert c.get_or_create("filler", pid=owner.pid).status == "existing"
        assert c.heartbeat(sid).session_id == sid
        assert c.end(other).end_reason is not None
        st = c.status()
        assert st.database_quota == QUOTA and st.database_used_bytes > QUOTA
        assert "quota" in st.storage_error

        human = omnid_ok("status")
        assert f"of a {QUOTA}-byte quota" in human and "WRITES REFUSED" in human, human
        js = omnid_json("status")
        assert js["database_quota"] == QUOTA and js["database_used_bytes"] > QUOTA and "quota" in js["storage_error"]

        # A larger quota, and writes are taken again.
        (home / "config.toml").write_text(f"max_database_bytes = {64 * QUOTA}\n")
        wait_for(lambda: c.status().storage_error is None, what="the daemon to read the new quota")
        c.add_message(sid, "user", "after the quota was raised")
    assert "Traceback" not in d.log_text()


# --- the database file deleted or replaced under the daemon -----------------------------

DETECTION_WINDOW = 1.0
"""The README's promise: writes acknowledged at most this long after the file went."""


def test_writes_stop_within_a_second_of_the_database_file_being_deleted(home, daemon, spawn_owner):
    owner = spawn_owner()
    db = daemon.paths.database
    with daemon.client() as c:
        before = c.get_or_create("before", pid=owner.pid).session.session_id
        os.unlink(db)
        gone_at = time.monotonic()
        acked = []
        with pytest.raises(StorageError) as refused:
            while time.monotonic() - gone_at < 10:
                acked.append((c.add_message(before, "user", f"m{len(acked)}"), time.monotonic()))
        refused_at = time.monotonic()
        assert refused.value.reason == "database_gone" and "deleted" in str(refused.value), refused.value
        # Writes acknowledged after the file went are lost with it: only within the window
        # (timed here, as each reply came back, so with a second of slack for a loaded machine).
        assert all(at - gone_at <= DETECTION_WINDOW + 1.0 for _, at in acked), refused_at - gone_at

        for attempt in (
            lambda: c.add_message(before, "user", "refused"),
            lambda: c.get_or_create("after", pid=owner.pid),
            lambda: c.end(before),
            lambda: c.heartbeat(before),  # commits nothing of its own, but is refused as writes are
        ):
            with pytest.raises(StorageError) as err:
                attempt()
            assert err.value.reason == "database_gone"
        assert c.get(before).tool_id == "before"  # reads of what was open go on
        assert "deleted" in c.status().storage_error
        assert "WRITES REFUSED" in omnid_ok("status")
        assert not db.exists(), "the daemon recreated the database file"
    assert daemon.stop() == 0
    assert "was deleted while omnid was running" in daemon.log_text()


def test_a_database_file_replaced_under_the_daemon_is_noticed_by_housekeeping_and_never_written(
    home, monkeypatch, start_daemon, spawn_owner
):
    monkeypatch.setenv("OMNID_SWEEP_INTERVAL", "1")
    d = start_daemon()
    owner = spawn_owner()
    db = d.paths.database
    with d.client() as c:
        kept = c.get_or_create("kept", pid=owner.pid).session.session_id
        copy = home / "copy.db"
        with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        os.rename(copy, db)
        # No write is needed to notice it: the housekeeping tick looks too.
        wait_for(lambda: c.status().storage_error, timeout=10, what="the daemon to notice the replaced file")
        assert "replaced" in c.status().storage_error
        with pytest.raises(StorageError) as err:
            c.add_message(kept, "user", "never acknowledged")
        assert err.value.reason == "database_gone" and "replaced" in str(err.value)
        with pytest.raises(StorageError):
            c.get_or_create("refused", pid=owner.pid)
    assert d.stop() == 0
    assert "was replaced by another file while omnid was running" in d.log_text()

    # The next daemon uses the file now there; nothing it lacks was ever acknowledged.
    d2 = start_daemon()
    with d2.client() as c:
        assert c.status().storage_error is None
        assert c.get(kept).tool_id == "kept"
        assert c.list_messages(kept).messages == []
        assert c.list_sessions(limit=100).sessions[0].session_id == kept
        assert len(c.list_sessions(limit=100).sessions) == 1
