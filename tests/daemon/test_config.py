"""The config file against a real daemon: read at start, reloaded when it changes on disk
(written in place or replaced), invalid files reported and ignored, and each setting
applied live: sweep interval, idle expiry, retention, durability, log level."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from omnid.identity import inspect
from omnid_client import Client
from tests.helpers import DaemonProcess, run_omnid, wait_for


def write_config(home: Path, text: str, *, replace: bool = False) -> None:
    """Write config.toml in place (as most editors do), or by renaming a new file over it."""
    path = home / "config.toml"
    if replace:
        tmp = home / ".config.toml.new"
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        with open(path, "w") as f:
            f.write(text)


def status(**kwargs):
    with Client(autostart=False, **kwargs) as c:
        return c.status()




def test_settings_are_read_at_start_and_applied_live_on_every_change(home):
    write_config(home, 'sweep_interval = 45\ndurability = "full"\nretention = 86400\n')
    d = DaemonProcess(home).start()
    try:
        st = status()
        assert st.config_path == str(home / "config.toml")
        assert st.config_state == "loaded" and st.config_error is None
        assert (st.settings.sweep_interval, st.settings.durability, st.settings.retention) == (45, "full", 86400)
        assert st.synchronous == "full"  # read back from the daemon's own database connection

        write_config(home, 'sweep_interval = 90\ndurability = "normal"\n')
        st = wait_for(lambda: (s := status()).synchronous == "normal" and s, what="durability normal to apply")
        assert st.settings.sweep_interval == 90
        assert st.settings.retention == 0, "a key removed from the file goes back to its default"

        write_config(home, 'durability = "full"\nidle_expiry = 3600\n', replace=True)
        st = wait_for(lambda: (s := status()).synchronous == "full" and s, what="the replaced file to be read")
        assert st.settings.idle_expiry == 3600

        os.unlink(home / "config.toml")
        st = wait_for(lambda: (s := status()).config_state == "default" and s, what="the deleted file to be noticed")
        assert st.synchronous == "normal" and st.settings.idle_expiry == 0
        assert d.running
    finally:
        assert d.stop() == 0, d.log_text()
    assert "Traceback" not in d.log_text()


BAD_CONFIGS = [
    ("sweep_interval = 5\n", "sweep_interval"),
    ('durability = "sometimes"\n', "durability"),
    ("sweep_intervall = 60\n", "unknown key 'sweep_intervall'"),
    ("idle_expiry = -1\n", "idle_expiry"),
    ("log_level = 3\n", "log_level"),
    ("sweep_interval = [\n", "not valid TOML"),
    ("idle_expiry = nan\n", "idle_expiry"),
]


def test_an_invalid_file_keeps_the_settings_in_force_and_status_says_why(home):
    write_config(home, "idle_expiry = 600\n")
    d = DaemonProcess(home).start()
    try:
        for text, words in BAD_CONFIGS:
            write_config(home, text)
            st = wait_for(
                lambda: (s := status()).config_state == "invalid" and words in (s.config_error or "") and s,
                what=f"the error for {text!r}",
            )
            assert str(home / "config.toml") in st.config_error
            assert st.settings.idle_expiry == 600 and st.settings.sweep_interval == 60, "the old settings stay"

        shown = run_omnid("status")
        assert shown.returncode == 0
        assert "INVALID" in shown.stdout and "previous settings kept" in shown.stdout
        assert "config file is invalid" in shown.stderr
        as_json = run_omnid("status", "--json")
        assert '"config_state": "invalid"' in as_json.stdout

        write_config(home, "idle_expiry = 60\n")
        st = wait_for(lambda: (s := status()).config_state == "loaded" and s, what="the fixed file to load")
        assert st.config_error is None and st.settings.idle_expiry == 60
    finally:
        assert d.stop() == 0, d.log_text()
    assert "Traceback" not in d.log_text()


def test_an_invalid_file_at_start_means_defaults_not_a_refusal(home):
    write_config(home, "this is not toml\n")
    d = DaemonProcess(home).start()
    try:
        st = status()
        assert st.config_state == "invalid" and "not valid TOML" in st.config_error
        assert st.settings.sweep_interval == 60 and st.synchronous == "normal"
    finally:
        assert d.stop() == 0


def test_config_check_validates_a_file_without_a_daemon(home, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('durability = "full"\n')
    r = run_omnid("config", "check", str(good))
    assert r.returncode == 0 and 'durability = "full"' in r.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("sweep_interval = 1\n")
    r = run_omnid("config", "check", str(bad))
    assert r.returncode == 1 and "sweep_interval" in r.stderr and str(bad) in r.stderr

    r = run_omnid("config", "check")  # the daemon's own file, absent here
    assert r.returncode == 0 and str(home / "config.toml") in r.stdout and "defaults" in r.stdout


# --- idle expiry ----------------------------------------------------------------------


def insert_session(db: sqlite3.Connection, *, idle_for: float, owner=None) -> str:
    sid = str(uuid.uuid4())
    now = time.time()
    db.execute(
        "INSERT INTO sessions (session_id, tool_id, session_type, owner_pid, owner_start, boot_id, metadata, "
        "started_at, last_activity) VALUES (?, 'legacy-tool', 'default', ?, ?, ?, '{}', ?, ?)",
        (sid, *(owner or (None, None, None)), now - idle_for - 1, now - idle_for),
    )
    return sid


def test_idle_expiry_ends_only_sessions_whose_owner_cannot_be_checked(home, spawn_owner):
    DaemonProcess(home).start().stop()  # create the database
    owner = spawn_owner()
    identity = inspect(owner.pid).identity
    with contextlib.closing(sqlite3.connect(home / "omnid.db")) as db, db:
        long_idle = insert_session(db, idle_for=1000)
        briefly_idle = insert_session(db, idle_for=20)
        owned = insert_session(db, idle_for=1000, owner=(identity.pid, identity.start, identity.boot_id))
    write_config(home, "idle_expiry = 100\n")

    d = DaemonProcess(home).start()
    try:
        with Client(autostart=False) as c:
            assert c.get(long_idle).end_reason == "expired", "expired at start"
            assert c.get(briefly_idle).live
            assert c.get(owned).live

            write_config(home, "idle_expiry = 5\n")  # applied at once, not at the next timer
            wait_for(lambda: c.get(briefly_idle).end_reason == "expired", what="the lowered expiry to apply")
            assert c.get(owned).live, "a session whose owner is verifiably alive never expires"

            write_config(home, "idle_expiry = 0\n")
            wait_for(lambda: c.status().settings.idle_expiry == 0, what="expiry off")
            owner.kill()
            owner.wait()
            wait_for(lambda: not c.get(owned).live, what="the owned session to be reaped")
            assert c.get(owned).end_reason == "reaped"
    finally:
        assert d.stop() == 0, d.log_text()


# --- log level ---------------------------------------------------------------------------


def reap_one(client: Client, spawn_owner) -> int:
    owner = spawn_owner()
    sid = client.get_or_create("log-level-tool", pid=owner.pid).session.session_id
    owner.kill()
    owner.wait()
    wait_for(lambda: not client.get(sid).live, what="the session to be reaped")
    return owner.pid


def test_log_level_follows_the_config_unless_given_on_the_command_line(home, spawn_owner):
    write_config(home, 'log_level = "warning"\n')
    d = DaemonProcess(home).start()
    try:
        with Client(autostart=False) as c:
            quiet = reap_one(c, spawn_owner)
            write_config(home, 'log_level = "info"\n')
            wait_for(lambda: c.status().settings.log_level == "info", what="log level info")
            loud = reap_one(c, spawn_owner)
        text = d.log_text()
        assert f"owner {quiet} exited" not in text and "serving" not in text
        assert f"owner {loud} exited" in text
    finally:
        assert d.stop() == 0
    os.unlink(d.log)

    d = DaemonProcess(home).start("--log-level", "info")  # config still says info; make it warning
    try:
        write_config(home, 'log_level = "warning"\n')
        with Client(autostart=False) as c:
            wait_for(lambda: c.status().settings.log_level == "warning", what="log level warning")
            pid = reap_one(c, spawn_owner)
        assert f"owner {pid} exited" in d.log_text(), "--log-level wins over the config file"
    finally:
        assert d.stop() == 0


def test_the_log_file_is_rotated_and_status_says_where_it_is(home):
    from omnid.daemon.logs import BACKUPS, MAX_BYTES

    log_file = home / "omnid.log"
    log_file.write_bytes(b"x" * (MAX_BYTES - 10) + b"\n")  # nearly full: the first lines roll it over
    d = DaemonProcess(home).start()
    try:
        st = status()
        assert st.log == str(log_file)
        assert st.log_target == f"file {log_file} (rotated at {MAX_BYTES // 2**20} MiB, {BACKUPS} kept)"
        shown = run_omnid("status")
        assert f"log:            file {log_file}" in shown.stdout
        assert (home / "omnid.log.1").stat().st_size >= MAX_BYTES - 10
        assert log_file.stat().st_size < 100_000 and "serving" in d.log_text()
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_sighup_rereads_the_config_and_every_stopping_signal_is_logged_by_name(home, stop_signal):
    write_config(home, "sweep_interval = 45\n")
    d = DaemonProcess(home).start()
    try:
        assert status().settings.sweep_interval == 45  # it answers: its signal handlers are set
        write_config(home, "sweep_interval = 75\n")
        os.kill(d.pid, signal.SIGHUP)
        wait_for(lambda: "received SIGHUP" in d.log_text() and "sweep_interval=75" in d.log_text(),
                 what="the SIGHUP reload to be logged")
        assert d.running, "SIGHUP must not stop the daemon"
        assert status().settings.sweep_interval == 75
        os.kill(d.pid, signal.SIGHUP)  # nothing changed: still a reload, still running
        wait_for(lambda: d.log_text().count("received SIGHUP") == 2, what="the second SIGHUP")
        assert status().pid == d.pid
        os.kill(d.pid, stop_signal)
        assert d.proc.wait(10) == 0, "a stopping signal stops the daemon gracefully"
    finally:
        if d.running:
            d.kill()
        d.stop()
    log = d.log_text()
    assert f"received {stop_signal.name}: stopping" in log
    assert "Traceback" not in log


DAY = 86400.0


def test_a_wall_clock_jump_moves_timestamps_with_it_and_idle_expiry_runs_on_monotonic_time(home, monkeypatch):
    """The machine's clock is not ours to move: the daemon reads its wall clock through
    one function, which adds the seconds in OMNID_TEST_CLOCK_FILE. Idle expiry never reads
    it to measure idleness, so a jump of a day either way changes nothing there."""
    skew = home / "clock-skew"
    skew.write_text("0")
    monkeypatch.setenv("OMNID_TEST_CLOCK_FILE", str(skew))
    DaemonProcess(home).start().stop()  # create the database
    with contextlib.closing(sqlite3.connect(home / "omnid.db")) as db, db:
        quiet = insert_session(db, idle_for=10)
    write_config(home, "idle_expiry = 100\n")

    d = DaemonProcess(home).start()
    try:
        with Client(autostart=False) as c:
            assert c.get(quiet).live
            skew.write_text(str(DAY))  # a day forward
            write_config(home, "idle_expiry = 101\n")  # a look at every session after the jump
            wait_for(lambda: c.status().settings.idle_expiry == 101, what="idle_expiry 101")
            assert c.get(quiet).live, "idle for seconds, not a day: the jump does not expire it"
            ahead = c.get_or_create("after-forward-jump").session
            assert abs(ahead.started_at - (time.time() + DAY)) < 60, "timestamps follow the clock forward"

            skew.write_text(str(-DAY))  # two days back
            behind = c.get_or_create("after-backward-jump").session
            assert abs(behind.started_at - (time.time() - DAY)) < 60, "timestamps follow the clock back at once"
            later = c.heartbeat(behind.session_id)
            assert behind.started_at < later.last_activity < behind.started_at + 60, "and stay ordered after it"
            assert c.get(quiet).live
            assert 0 < c.status().uptime < 600

            write_config(home, "idle_expiry = 5\n")  # quiet has been idle for over 10 s, by monotonic time
            wait_for(lambda: c.get(quiet).end_reason == "expired", what="the quiet session to expire")
            assert c.get(ahead.session_id).live and c.get(behind.session_id).live
    finally:
        assert d.stop() == 0, d.log_text()
    assert "the wall clock went back" in d.log_text()
