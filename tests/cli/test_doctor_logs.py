"""``omnid doctor`` and ``omnid logs`` against real daemons, real database files, real
config files and a real log file that is written to and rotated while ``logs -f`` follows it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import omnid_daemons, run_omnid, wait_for


@pytest.fixture(autouse=True)
def _no_stray_daemons(no_stray_daemons) -> None:
    """For every test here."""


def doctor(expect: int) -> dict[str, dict]:
    r = run_omnid("doctor", "--json")
    assert r.returncode == expect, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is (expect == 0)
    return {c["name"]: c for c in report["checks"]}


def test_doctor_passes_a_healthy_daemon_and_explains_in_text(home, daemon, client):
    checks = doctor(0)
    assert {c["state"] for c in checks.values()} <= {"ok", "skip"}, checks
    assert f"pid {daemon.pid}" in checks["daemon"]["message"]
    assert checks["database"]["message"].endswith("integrity ok")
    assert "daemon 0." in checks["versions"]["message"]
    text = run_omnid("doctor")
    assert text.returncode == 0 and text.stdout.rstrip().endswith("all checks passed")
    assert client.status().pid == daemon.pid


def test_doctor_never_starts_a_daemon_and_finds_what_is_wrong(home, daemon, client):
    client.get_or_create("doctor-t", pid=os.getpid())
    client.close()
    assert daemon.stop() == 0
    db = sqlite3.connect(home / "omnid.db")
    db.execute("UPDATE sessions SET last_activity = ?", (time.time() + 86400,))
    db.commit()
    db.close()
    (home / "config.toml").write_text("max_database_bytes = 4096\n")
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with open(home / "omnid.log", "a") as log:
        log.write(f"{stamp},001 ERROR omnid.store: the disk said no\n  a continuation line\n")

    checks = doctor(1)

    assert checks["daemon"]["state"] == "warn" and "not running" in checks["daemon"]["message"]
    assert checks["database"]["state"] == "warn" and "in the future" in checks["database"]["message"]
    assert checks["storage"]["state"] == "fail" and "max_database_bytes" in checks["storage"]["fix"]
    assert checks["log"]["state"] == "warn" and "the disk said no" in checks["log"]["message"]
    assert checks["config"]["state"] == "ok"
    assert not omnid_daemons(home)

    (home / "config.toml").write_text("sweep_interval = 'often'\n")
    (home / "omnid.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 4080)
    os.chmod(home / "run", 0o777)
    try:
        checks = doctor(1)
    finally:
        os.chmod(home / "run", 0o700)
    assert checks["config"]["state"] == "fail" and "omnid config check" in checks["config"]["fix"]
    assert checks["database"]["state"] == "fail"
    socket_dir = checks["socket directory"]
    assert socket_dir["state"] == "fail" and "writable by others" in socket_dir["message"]
    assert checks["daemon"]["state"] == "fail"  # a refusal is no "not running"
    text = run_omnid("doctor").stdout
    assert "[FAIL] config:" in text and "fix: omnid config check" in text
    assert not omnid_daemons(home)


# --- logs ----------------------------------------------------------------------------------


def test_logs_prints_the_last_records_with_filters(home, daemon, client):
    client.get_or_create("logs-t", pid=os.getpid())
    wait_for(lambda: "serving" in daemon.log_text(), what="the start-up line")
    last = run_omnid("logs", "-n", "1", "--json")
    assert last.returncode == 0, last.stderr
    records = [json.loads(line) for line in last.stdout.splitlines()]
    assert len(records) == 1 and set(records[0]) == {"time", "level", "logger", "message"}
    every = run_omnid("logs", "-n", "1000").stdout
    assert "serving" in every and " INFO " in every
    assert run_omnid("logs", "--level", "error").stdout == ""
    assert run_omnid("logs", "--since", "2099-01-01").stdout == ""
    assert omnid_daemons(home)[0].pid == daemon.pid


def test_logs_of_a_home_without_a_log_or_daemon(home):
    r = run_omnid("logs")
    assert r.returncode == 1 and "no log file" in r.stderr
    assert not omnid_daemons(home)


def log_line(message: str, level: str = "INFO") -> str:
    return f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')},000 {level} omnid.test: {message}\n"


@pytest.mark.timeout(60)  # a missed line would block readline() below
def test_logs_follow_reads_across_a_rotation_and_stops_cleanly_on_ctrl_c(home):
    log = home / "omnid.log"
    log.write_text(log_line("before"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", "logs", "-f", "-n", "1", "--level", "info", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen: list[str] = []

    def next_message() -> str:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        seen.append(json.loads(line)["message"])
        return seen[-1]

    try:
        assert next_message() == "before"
        with open(log, "a") as f:
            f.write(log_line("appended") + log_line("filtered", "DEBUG"))
        assert next_message() == "appended"
        with open(log, "a") as f:
            f.write(log_line("last words of the old file"))
        os.rename(log, f"{log}.1")  # as RotatingFileHandler does
        log.write_text(log_line("in the new file"))
        assert next_message() == "last words of the old file"
        assert next_message() == "in the new file"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err
    assert "filtered" not in seen
    assert Path(f"{log}.1").exists()
