"""Files omnid writes cannot be redirected: planted links, FIFOs, devices, directories and
other users' files at a path it writes are refused with a clear error (never followed,
never blocking, never a traceback), against the real CLI and real daemons."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from omnid_client import Client, Invalid
from tests.helpers import DaemonProcess, omnid_error, omnid_json, run_omnid, wait_for

TOOL = "safe-files-test"
SECRET = b"the victim's own data\n"
NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(SECRET)
    return path


def untouched(victim: Path) -> bool:
    return victim.read_bytes() == SECRET


def no_traceback(result: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in result.stdout + result.stderr


# --- omnid export -o, omnid backup ---------------------------------------------------


def test_a_symlink_at_the_export_target_is_refused_and_its_target_untouched(daemon, client, tmp_path, victim):
    client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False)
    out = tmp_path / "out.jsonl"
    out.symlink_to(victim)
    for force in ((), ("--force",)):
        r = run_omnid("export", "-o", str(out), *force)
        assert r.returncode == 1 and no_traceback(r), r.stderr
        assert f"{out} is a symlink" in r.stderr
        assert out.is_symlink() and untouched(victim)


def test_an_export_never_writes_through_a_link_planted_at_a_guessable_temp_name(daemon, client, tmp_path, victim):
    """Today's temp name is ``.NAME.PID.partial``: pids come in order, so links planted for
    the next few thousand catch the export's temp file and it is written into the victim."""
    client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False)
    out = tmp_path / "out.jsonl"
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for pid in range(last + 1, last + 3000):
        (tmp_path / f".{out.name}.{pid}.partial").symlink_to(victim)
    assert omnid_json("export", "-o", str(out))["records"]["session"] == 1
    assert untouched(victim)
    assert not out.is_symlink() and b'"type":"session"' in out.read_bytes()
    assert oct(out.stat().st_mode & 0o777) == oct(0o600)


def test_a_fifo_at_the_export_target_is_refused_without_blocking(daemon, client, tmp_path):
    client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    r = run_omnid("export", "-o", str(fifo), "--force", timeout=20)
    assert r.returncode == 1 and no_traceback(r), r.stderr
    assert "is a FIFO, not a regular file" in r.stderr
    assert fifo.is_fifo()


def test_a_backup_is_never_written_through_a_link_or_into_a_fifo(daemon, client, tmp_path, victim):
    client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False)
    link = tmp_path / "b.db"
    link.symlink_to(victim)
    error = omnid_error("backup", str(link), "--force")
    assert error["code"] == "io" and "is a symlink" in error["message"]
    assert link.is_symlink() and untouched(victim)
    fifo = tmp_path / "b.fifo"
    os.mkfifo(fifo)
    assert "is a FIFO" in omnid_error("backup", str(fifo), "--force")["message"]
    assert fifo.is_fifo()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_os_error_on_the_export_target_is_a_clean_error(daemon, client, tmp_path, victim):
    r = run_omnid("export", "-o", str(victim / "x.jsonl"))
    assert r.returncode == 1 and no_traceback(r), r.stderr
    assert r.stderr == f"omnid: io: cannot write {victim / 'x.jsonl'}: Not a directory\n"


# --- service unit files ----------------------------------------------------------------


@pytest.fixture
def unit_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PATH", "/nonexistent")  # no systemctl: only the files are written
    path = tmp_path / "config" / "systemd" / "user"
    path.mkdir(parents=True)
    return path


def test_service_install_never_writes_through_a_planted_link(home, unit_dir, victim):
    (unit_dir / ".omnid.service.tmp").symlink_to(victim)  # today's fixed temp name
    r = run_omnid("service", "install", "--manager", "systemd", "--no-start")
    assert untouched(victim)
    assert (unit_dir / "omnid.service").is_file() and not (unit_dir / "omnid.service").is_symlink()
    assert oct((unit_dir / "omnid.service").stat().st_mode & 0o777) == oct(0o644)

    (unit_dir / "omnid.socket").unlink()
    (unit_dir / "omnid.socket").symlink_to(victim)
    r = run_omnid("service", "install", "--manager", "systemd", "--no-start")
    assert r.returncode == 1 and no_traceback(r), r.stderr
    assert "omnid.socket is a symlink" in r.stderr
    assert untouched(victim)


# --- omnid's own files -------------------------------------------------------------------


OWN_FILES = ["omnid.log", "omnid.lock", "status.json", "omnid.db", "omnid.db-wal"]


def refused_start(home: Path) -> str:
    """Start a daemon on ``home`` that must refuse: its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", "serve", "--log-file", str(home / "omnid.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the daemon started (or hung) instead of refusing")
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", OWN_FILES)
def test_a_symlink_planted_among_omnids_own_files_stops_the_daemon_from_starting(home, victim, name):
    (home / name).symlink_to(victim)
    err = refused_start(home)
    assert "omnid: cannot start" in err and f"{home / name} is a symlink" in err
    assert untouched(victim) and (home / name).is_symlink()


@pytest.mark.parametrize("name", OWN_FILES)
def test_another_users_file_among_omnids_own_files_stops_the_daemon_from_starting(home, name):
    planted = home / name
    planted.write_bytes(b"")
    os.chown(planted, NOBODY, -1)
    err = refused_start(home)
    assert f"{planted} belongs to uid {NOBODY}, not to you" in err
    assert planted.read_bytes() == b""


def test_a_client_that_starts_the_daemon_reports_a_planted_log_link(home, victim):
    (home / "omnid.log").symlink_to(victim)
    r = run_omnid("reap")  # a command that writes: it starts a daemon
    assert r.returncode == 3 and no_traceback(r), r.stderr
    assert "omnid failed to start: cannot use the log file" in r.stderr and "omnid.log is a symlink" in r.stderr
    assert untouched(victim)


# --- the retention archive ---------------------------------------------------------------


def ended_sessions(client: Client, workspace: Path, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        s = client.get_or_create(TOOL, workspace=str(workspace), dedup=False).session
        client.add_message(s.session_id, "user", "keep me")
        client.end(s.session_id)
        ids.append(s.session_id)
    return ids


def still_serving(daemon: DaemonProcess, spawn_owner, workspace: Path) -> None:
    """The daemon answers, reaps a session whose owner dies, and stops on SIGTERM."""
    owner = spawn_owner()
    with daemon.client(timeout=5.0) as c:
        sid = c.get_or_create(TOOL, pid=owner.pid, workspace=str(workspace)).session.session_id
        owner.kill()
        owner.wait()
        wait_for(lambda: c.get(sid).end_reason == "reaped", what="the dead owner's session to be reaped")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0


def test_a_fifo_as_the_archive_is_refused_and_the_daemon_keeps_serving(home, tmp_path, spawn_owner):
    d = DaemonProcess(home).start()
    try:
        with d.client(timeout=10.0) as c:
            kept = ended_sessions(c, tmp_path, 2)
            fifo = tmp_path / "archive.fifo"
            os.mkfifo(fifo)
            with pytest.raises(Invalid, match="is a FIFO, not a regular file.*nothing was deleted"):
                c.run_retention(older_than=0, archive=str(fifo))
            # With a reader at the other end the FIFO can be opened: still refused.
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                with pytest.raises(Invalid, match="is a FIFO"):
                    c.run_retention(older_than=0, archive=str(fifo))
            finally:
                os.close(reader)
            with pytest.raises(Invalid, match="is a directory"):
                c.run_retention(older_than=0, archive=str(tmp_path))
            assert [c.get(sid).session_id for sid in kept] == kept
        still_serving(d, spawn_owner, tmp_path)
    finally:
        if d.running:
            d.kill()
    assert "Traceback" not in d.log_text()


def test_a_fifo_at_the_daemons_own_archive_fails_the_timed_run_and_nothing_else(
    home, tmp_path, spawn_owner, monkeypatch
):
    first = DaemonProcess(home).start()
    with first.client() as c:
        kept = ended_sessions(c, tmp_path, 1)
    assert first.stop() == 0
    os.mkfifo(home / "archive.jsonl")
    monkeypatch.setenv("OMNID_RETENTION", "0.01")  # the run at start finds the session due
    d = DaemonProcess(home).start()
    try:
        with d.client(timeout=10.0) as c:
            st = wait_for(lambda: (s := c.status().retention).failures >= 1 and s, what="the timed run to fail")
            assert "is a FIFO" in st.last_run.error and st.archived == 0
            assert c.get(kept[0]).session_id == kept[0]
        still_serving(d, spawn_owner, tmp_path)
    finally:
        if d.running:
            d.kill()
    assert "retention (timer): failed, nothing deleted" in d.log_text()
    assert (home / "archive.jsonl").is_fifo()
