"""omnid's core promises about owners, end to end and without root: a real daemon, real
owner processes (running, zombie, or a live pid whose recorded start differs from the
kernel's), a reboot simulated through the daemon's boot-id test seam (OMNID_BOOT_ID_FILE),
and the daemon's own file descriptors counted from /proc.

Each test checks that the right mechanism found the dead owner (the startup sweep, ``omnid
reap``), not just that some later one did: a broken sweep hidden behind a working exit
event or resync would otherwise go unnoticed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from omnid_client import Client, NotFound
from tests.helpers import fd_targets, omnid_json, start_ticks, wait_for

PREVIOUS_BOOT = "omnid-test-boot-1"
THIS_BOOT = "omnid-test-boot-2"
REUSED = "pid reused by another process"


def set_owner_start(db_path: Path, session_id: str, start: int) -> None:
    """Record another start time for a session's owner, in the database file itself (the
    daemon may be running: SQLite serialises the write with the daemon's)."""
    db = sqlite3.connect(db_path, timeout=10)
    try:
        with db:
            sql = "UPDATE sessions SET owner_start = ? WHERE session_id = ?"
            changed = db.execute(sql, (start, session_id)).rowcount
        assert changed == 1
    finally:
        db.close()


def last_reap(client: Client) -> tuple[str, int] | None:
    reap = client.status().last_reap
    return (reap.trigger, reap.reaped) if reap else None


def daemon_pidfds(pid: int) -> int:
    """The exit watches the daemon holds: its pidfds, from /proc (its other descriptors come
    and go, e.g. while it snapshots its own code after starting)."""
    return sum("pidfd" in link for link in fd_targets(pid))


# --- a reboot -------------------------------------------------------------------------------


def test_a_reboot_ends_the_sessions_of_the_previous_boot(home, start_daemon, spawn_owner, monkeypatch):
    seam = home / "boot_id"
    seam.write_text(PREVIOUS_BOOT)
    monkeypatch.setenv("OMNID_BOOT_ID_FILE", str(seam))
    owner = spawn_owner()  # outlives the "reboot": same pid, same start ticks
    first = start_daemon()
    with first.client() as c:
        old = c.get_or_create("claude-code", pid=owner.pid).session
        assert old.boot_id == PREVIOUS_BOOT and old.owner_start == start_ticks(owner.pid)
    first.stop()

    seam.write_text(THIS_BOOT)
    with start_daemon().client() as c:
        assert c.get(old.session_id).end_reason == "reaped"
        assert last_reap(c) == ("startup", 1), "the startup sweep itself must see the reboot"
        new = c.get_or_create("claude-code", pid=owner.pid)
        assert new.status == "created" and new.session.boot_id == THIS_BOOT
        assert new.session.session_id != old.session_id


# --- zombies ---------------------------------------------------------------------------------


def test_a_zombie_cannot_own_a_session(client, zombie):
    pid = zombie()
    with pytest.raises(NotFound) as exc:
        client.get_or_create("claude-code", pid=pid)
    assert exc.value.details.get("field") == "pid"
    assert client.find("claude-code", pid=pid) is None
    assert client.status().live_sessions == 0 and client.status().watched_processes == 0


# --- owners that died (or whose pid was reused) while omnid was down -----------------------


@pytest.mark.parametrize("how", ["exited", "zombie", "reused"])
def test_the_startup_sweep_reaps_owners_that_died_while_omnid_was_down(
    home, start_daemon, spawn_owner, forked_owner, how
):
    owner = forked_owner() if how == "zombie" else spawn_owner()
    keeper = spawn_owner()
    first = start_daemon()
    with first.client() as c:
        sid = c.get_or_create("claude-code", pid=owner.pid).session.session_id
        kept = c.get_or_create("claude-code", pid=keeper.pid).session.session_id
    first.stop()
    if how == "exited":
        owner.kill()
        owner.wait()
    elif how == "zombie":
        owner.exit()
    else:  # the pid now belongs to a process that started at another time than the recorded one
        set_owner_start(first.paths.database, sid, start_ticks(owner.pid) + 1)

    with start_daemon().client() as c:
        assert c.get(sid).end_reason == "reaped"
        assert c.get(kept).live
        assert last_reap(c) == ("startup", 1)
        assert c.status().watched_processes == 1
        if how == "reused":  # the process now holding the pid gets a session of its own
            fresh = c.get_or_create("claude-code", pid=owner.pid)
            assert fresh.status == "created" and fresh.session.owner_start == start_ticks(owner.pid)


# --- `omnid reap` ----------------------------------------------------------------------------


def test_omnid_reap_finds_a_reused_pid_that_no_exit_event_reports(daemon, client, spawn_owner):
    owner = spawn_owner()
    sid = client.get_or_create("claude-code", pid=owner.pid).session.session_id
    kept = client.get_or_create("codex", pid=spawn_owner().pid).session.session_id
    set_owner_start(daemon.paths.database, sid, start_ticks(owner.pid) - 1)

    dry = omnid_json("reap", "--dry-run")
    assert dry["dry_run"] is True
    assert [(s["session_id"], s["owner_pid"], s["cause"]) for s in dry["sessions"]] == [(sid, owner.pid, REUSED)]
    assert client.get(sid).live, "a dry run ends nothing"

    real = omnid_json("reap")
    assert [(s["session_id"], s["cause"]) for s in real["sessions"]] == [(sid, REUSED)]
    assert client.get(sid).end_reason == "reaped" and client.get(kept).live
    assert last_reap(client) == ("manual", 1)
    assert omnid_json("reap")["sessions"] == []


# --- the periodic sweep (the daemon's minute tick) -------------------------------------------


def test_the_periodic_sweep_finds_a_reused_pid_that_no_exit_event_reports(start_daemon, spawn_owner, monkeypatch):
    monkeypatch.setenv("OMNID_SWEEP_INTERVAL", "1")  # 0.9 to 1.1 s apart: each result stays a while
    d = start_daemon()
    with d.client() as c:
        owner = spawn_owner()
        sid = c.get_or_create("claude-code", pid=owner.pid).session.session_id
        kept = c.get_or_create("codex", pid=spawn_owner().pid).session.session_id
        set_owner_start(d.paths.database, sid, start_ticks(owner.pid) - 1)
        wait_for(lambda: last_reap(c) == ("sweep", 1), timeout=30, what="a periodic sweep to reap the session")
        assert c.get(sid).end_reason == "reaped" and c.get(kept).live
        wait_for(lambda: last_reap(c) == ("sweep", 0), timeout=30, what="the next sweep, which finds nothing more")
        assert c.get(kept).live


# --- dedup and non-dedup sessions of one tool and process -----------------------------------


def test_dedup_and_non_dedup_sessions_of_one_tool_and_process_stay_apart(client, spawn_owner):
    owner = spawn_owner()
    plain = client.get_or_create("claude-code", pid=owner.pid, dedup=False)
    assert plain.status == "created"
    # A dedup lookup never returns a session created without dedup ...
    shared = client.get_or_create("claude-code", pid=owner.pid)
    assert shared.status == "created" and shared.session.session_id != plain.session.session_id
    again = client.get_or_create("claude-code", pid=owner.pid)
    assert again.status == "existing" and again.session.session_id == shared.session.session_id
    # ... and a caller without dedup never gets an existing session.
    other = client.get_or_create("claude-code", pid=owner.pid, dedup=False)
    assert other.status == "created"
    assert other.session.session_id not in {plain.session.session_id, shared.session.session_id}
    assert client.find("claude-code", pid=owner.pid).session_id == shared.session.session_id
    st = client.status()
    assert (st.live_sessions, st.watched_processes) == (3, 1)

    # Ending the dedup one frees its slot and keeps the owner watched for the other two.
    client.end(shared.session.session_id)
    assert client.find("claude-code", pid=owner.pid) is None
    assert client.status().watched_processes == 1
    fresh = client.get_or_create("claude-code", pid=owner.pid)
    assert fresh.status == "created" and fresh.session.session_id != shared.session.session_id

    owner.kill()
    live = [plain.session.session_id, other.session.session_id, fresh.session.session_id]
    wait_for(lambda: all(client.get(s).end_reason == "reaped" for s in live), what="every live session to be reaped")
    assert client.get(shared.session.session_id).end_reason == "ended"
    assert last_reap(client) == ("exit event", 3)


# --- ending a session releases the watch on its owner --------------------------------------


def test_ending_sessions_releases_the_watch_on_their_owners(daemon, client, spawn_owner):
    owners = [spawn_owner() for _ in range(3)]
    sids = [client.get_or_create("claude-code", pid=o.pid).session.session_id for o in owners]
    two = client.get_or_create("codex", pid=owners[0].pid).session.session_id  # a second session, same owner
    assert client.status().watched_processes == 3
    assert daemon_pidfds(daemon.pid) == 3, "one watch per owner"

    client.end(sids[0])
    assert client.status().watched_processes == 3, "owner 0 still has a live session"
    assert daemon_pidfds(daemon.pid) == 3
    for sid in [two, *sids[1:]]:
        client.end(sid)
    assert client.status().watched_processes == 0
    assert daemon_pidfds(daemon.pid) == 0, "every watch closed with its owner's last session"
    client.end(sids[1])  # ending again is idempotent and releases nothing more
    assert daemon_pidfds(daemon.pid) == 0 and client.status().watched_processes == 0
