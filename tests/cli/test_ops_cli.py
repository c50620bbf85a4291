"""Running omnid rather than using it, with real daemons and real files: read-only commands
that never start a daemon, ``serve``'s exit statuses and pid, ``doctor``, ``logs``, the exit
status table, and every command's --json shape (``omnid schema``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import click
import jsonschema
import pytest
from click.testing import CliRunner

from omnid.cli import main
from omnid.cli.exits import EXIT_CODES
from omnid.cli.schemas import NO_JSON, SCHEMAS, schema
from tests.helpers import ROOT, fd_targets, gone, omnid_daemons, run_omnid, wait_for

NOT_RUNNING, ALREADY_RUNNING = 3, 4


@pytest.fixture(autouse=True)
def _no_stray_daemons(no_stray_daemons) -> None:
    """For every test here."""


def inproc(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def leaves(group: click.Group = main, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(leaves(command, (*path, name)))
        else:
            found[" ".join((*path, name))] = command
    return found


# --- read-only commands never start a daemon ---------------------------------------------

SID = str(uuid.uuid4())
READ_ONLY = [
    "status", "stats", "reap --dry-run", "sessions list", f"sessions show {SID}", f"sessions summary {SID}",
    "session find --tool t", "projects list", "projects show", "memories list", "memories get k",
    "memories history k", f"context show {SID}", f"context pack --session {SID}", f"messages list {SID}",
    "tasks list", "tasks show task_0123456789abcdef", "search words", f"checkpoint list --session {SID}",
    "checkpoint show x", "retention status", "retention run --dry-run --older-than 1d",
    "cleanup orphans --dry-run --older-than 1d", "events -n 1", "stop",
]


def test_read_only_commands_say_the_daemon_is_not_running_and_start_none(home):
    vector = home / "vector.json"
    vector.write_text("[1, 0, 0]")
    for command in [*READ_ONLY, f"memories similar {vector}"]:
        result = inproc(*command.split())
        assert result.exit_code == NOT_RUNNING, f"omnid {command}: {result.exit_code} {result.output}"
        assert "not running" in result.output, command
    assert not omnid_daemons(home)
    assert not (home / "omnid.db").exists(), "something started a daemon"


# --- serve ---------------------------------------------------------------------------------


def test_serve_detach_prints_its_pid_and_a_second_serve_names_the_running_one(home):
    started = run_omnid("serve", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)["pid"]
    try:
        assert json.loads(run_omnid("status", "--json").stdout)["pid"] == pid

        foreground = run_omnid("serve")
        assert foreground.returncode == ALREADY_RUNNING
        assert f"pid {pid}" in foreground.stderr and "Traceback" not in foreground.stderr
        detached = run_omnid("serve", "--detach")
        assert (detached.returncode, detached.stdout) == (ALREADY_RUNNING, "")
        assert f"already running (pid {pid})" in detached.stderr
        as_json = run_omnid("serve", "--json")
        assert as_json.returncode == ALREADY_RUNNING
        assert json.loads(as_json.stdout)["error"] == {
            "code": "already_running", "message": f"omnid is already running (pid {pid})", "pid": pid,
        }
        assert "serving" in (home / "omnid.log").read_text(), "--detach logs to omnid.log by default"
    finally:
        stopped = run_omnid("stop", "--json")
    assert json.loads(stopped.stdout) == {"pid": pid, "stopping": True}
    wait_for(lambda: gone(pid), what="the daemon to exit")


def test_serve_detach_human_output_and_a_failed_start(home):
    (home / "omnid.db").mkdir()  # no database can be opened: the detached daemon says so through the pipe
    failed = run_omnid("serve", "--detach", "--json")
    assert failed.returncode == 1, failed.stdout
    assert json.loads(failed.stdout)["error"]["code"] == "cannot_start"
    failed = run_omnid("serve", "--detach")
    assert failed.returncode == 1 and "cannot start" in failed.stderr and str(home / "omnid.log") in failed.stderr
    (home / "omnid.db").rmdir()
    started = run_omnid("serve", "--detach")
    assert started.returncode == 0, started.stderr
    pid = int(re.fullmatch(r"omnid started \(pid (\d+)\)\n", started.stdout).group(1))
    assert run_omnid("stop").returncode == 0
    wait_for(lambda: gone(pid), what="the daemon to exit")


@pytest.mark.timeout(120)  # readline() below waits for the daemon's readiness
def test_serve_in_the_foreground_prints_its_pid_once_ready_with_json(home):
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", "serve", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert json.loads("".join(lines)) == {"pid": proc.pid}
        assert json.loads(run_omnid("status", "--json").stdout)["pid"] == proc.pid  # printed once it answers
        assert run_omnid("stop").returncode == 0
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.communicate()


# --- exit statuses and JSON shapes -----------------------------------------------------------


def test_the_exit_status_table_is_in_help_and_in_the_readme():
    helped = run_omnid("--help").stdout
    readme = (ROOT / "README.md").read_text()
    for code, meaning in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+{re.escape(meaning)}$", helped, re.M), code
        assert re.search(rf"^\| `{code}` \|", readme, re.M), f"exit status {code} missing from the README's table"
    status_help = " ".join(run_omnid("status", "--help").stdout.split())
    assert "3 if not" in status_help and "1 if it cannot be asked" in status_help


def test_every_command_has_json_and_a_schema_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    commands = leaves()
    for name, command in commands.items():
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        if name in NO_JSON:
            assert "--json" not in options, name
            continue
        assert "--json" in options, f"omnid {name} has no --json"
        assert name in SCHEMAS, f"omnid schema knows nothing of {name}"
        assert f"`{name}`" in readme, f"the README's JSON list misses {name}"
    assert set(SCHEMAS) - set(commands) == {"error"}
    assert set(NO_JSON) <= set(commands)
    every = json.loads(run_omnid("schema", "all").stdout)
    assert set(every) == set(SCHEMAS)
    assert every["stop"]["$defs"]["Stopping"]["required"] == ["pid", "stopping"]
    unknown = run_omnid("schema", "nosuch")
    assert unknown.returncode == 2 and "no command with --json" in unknown.stderr


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def is_date_time(value: object) -> bool:
    """ISO 8601 with its zone, as --json prints every time."""
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


def decodes(command: str, text: str) -> None:
    """``text`` is what ``omnid schema COMMAND`` (the JSON Schema users see) says ``command`` prints."""
    validator = jsonschema.Draft202012Validator(schema(command), format_checker=FORMATS)
    lines = text.splitlines() if command in ("logs", "events") else [text]
    for line in filter(None, lines):
        errors = [f"{e.message} at {e.json_path}" for e in validator.iter_errors(json.loads(line))]
        assert not errors, f"omnid {command} --json does not match its schema: {errors}\n{line}"


def test_json_output_matches_the_schema(home, daemon, client, tmp_path):
    sid = json.loads(run_omnid("session", "start", "--tool", "schema-t", "--json").stdout)["session"]["session_id"]
    runs = {
        "status": ["status"], "stats": ["stats"], "reap": ["reap", "--dry-run"], "sessions list": ["sessions", "list"],
        "sessions show": ["sessions", "show", sid], "session find": ["session", "find", "--tool", "nope"],
        "sessions summary": ["sessions", "summary", sid], "context show": ["context", "show", sid],
        "search": ["search", "x"], "retention status": ["retention", "status"], "doctor": ["doctor"],
        "config check": ["config", "check"], "service show": ["service", "show"], "logs": ["logs", "-n", "1"],
        "backup": ["backup", str(tmp_path / "b.db")], "completion": ["completion", "bash"],
        "export": ["export", "-o", str(tmp_path / "e.jsonl")],
    }
    for command, args in runs.items():
        r = run_omnid(*args, "--json")
        assert r.returncode in (0, 1), f"{command}: {r.returncode} {r.stderr}"
        decodes(command, r.stdout)
    decodes("error", run_omnid("sessions", "show", str(uuid.uuid4()), "--json").stdout)
    decodes("status", run_omnid("status", "--json").stdout)
    daemon.stop()
    decodes("status", run_omnid("status", "--json").stdout)


def has_open(pid: int, path: Path) -> bool:
    try:
        return str(path) in fd_targets(pid)
    except OSError:  # the process is gone
        return False


WAITING = {"x86_64": {"0", "7", "23", "270", "271"}, "aarch64": {"63", "72", "73"}}
"""read, poll, select, pselect6, ppoll: the system calls a process waits for input in."""


def waiting_for_input(pid: int) -> bool:
    """Blocked in a read/select/poll, by /proc/PID/syscall (x86-64 and arm64 numbers)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return bool(fields) and fields[0] in WAITING.get(os.uname().machine, set())


@pytest.mark.parametrize("args", [["hook", "--tool", "t"], ["hook", "--tool", "t", "--"]], ids=["fast", "click"])
def test_ctrl_c_exits_130_without_a_traceback(home, args):
    """The hot commands run without click (fast.py), ``--`` sends the same one through click."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", *args], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: waiting_for_input(proc.pid), what="the hook to wait for its input")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
