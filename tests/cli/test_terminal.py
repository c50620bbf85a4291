"""What the ``omnid`` command shows a person at a real terminal (tmux, its raw output logged
with pipe-pane) and not a pipe: progress bars, colours, and what Ctrl-C leaves written."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from omnid.cli._progress import Progress
from omnid.cli._style import ago
from tests.cli.test_id_prefixes import session_record
from tests.helpers import Tmux, count, omnid_json, run_omnid, wait_for
from tests.offline.test_omnimemory import current_db

OMNID = f"{sys.executable} -m omnid"


class Terminal(Tmux):
    """A bash in tmux whose raw output (escape codes, carriage returns) is logged to a file."""

    def __init__(self, cwd: Path):
        super().__init__(["bash", "--norc", "--noprofile"], cwd)
        self.log = cwd / f"{self.name}.log"
        self.run("pipe-pane", "-o", f"cat >> {self.log}")
        self.done = 0

    def command(self, line: str, timeout: float = 60) -> str:
        """Run ``line``, wait for it to end, and return the raw bytes it wrote (as text)."""
        self.done += 1
        start = self.log.stat().st_size if self.log.exists() else 0
        marker = f"DONE{self.done}"
        self.type(f"{line}; echo {marker}=$?")
        wait_for(lambda: re.search(rf"{marker}=\d", self.raw(start)), timeout=timeout, what=f"{line!r} to finish")
        return self.raw(start)

    def raw(self, start: int = 0) -> str:
        return self.log.read_bytes()[start:].decode(errors="replace") if self.log.exists() else ""


@pytest.fixture
def terminal(home, tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    t = Terminal(tmp_path)
    t.type(f"export OMNID_HOME={home}; unset NO_COLOR FORCE_COLOR")
    yield t
    t.close()


def export_file(path: Path, sessions: int) -> Path:
    at = time.time() - 3600
    with path.open("wb") as f:
        for _ in range(sessions):
            f.write(msgspec.json.encode(session_record(str(uuid.uuid4()), at)) + b"\n")
    return path


SGR = re.compile(r"\x1b\[[0-9;]*m")
"""A colour (select graphic rendition) code; bash's own codes (bracketed paste) are not these."""
BAR = re.compile(r"\r(checking|importing|exporting|backing up|purging)\b[^\r\n]*")


def bars(raw: str) -> set[str]:
    return {m.group(1) for m in BAR.finditer(raw)}


def test_long_work_shows_progress_on_a_terminal_only(daemon, home, terminal, tmp_path):
    data = export_file(tmp_path / "in.jsonl", 3000)
    shown = terminal.command(f"{OMNID} import {data}")
    assert bars(shown) == {"checking", "importing"}, shown
    assert re.search(r"importing \[#+-*\] [\d,]+/3,000 records +\d+%", shown), shown
    assert "\x1b[K" in shown
    assert "session  3000" in shown and "DONE1=0" in shown
    assert bars(terminal.command(f"{OMNID} export -o {tmp_path / 'out.jsonl'}")) == {"exporting"}
    shown = terminal.command(f"{OMNID} backup {tmp_path / 'copy.db'}")
    assert bars(shown) == {"backing up", "checking"} and "\rchecking the copy's integrity" in shown
    omnimemory = current_db(tmp_path / "dashboard.db", tmp_path)
    assert bars(terminal.command(f"{OMNID} import-omnimemory {omnimemory}")) == {"importing"}
    assert bars(terminal.command(f"{OMNID} retention run --older-than 60s --purge")) == {"purging"}
    assert count(home, "sessions", "tool_id = 'prefix-test'") == 0

    # Piped, with --quiet or with --json: not a byte of it.
    quiet = [
        f"{OMNID} import {data} 2> {tmp_path / 'err1'}",
        f"{OMNID} export -o {tmp_path / 'out2.jsonl'} --quiet",
        f"{OMNID} backup {tmp_path / 'copy2.db'} --json",
        f"{OMNID} retention run --older-than 60s --purge -q",
    ]
    for line in quiet:
        raw = terminal.command(line)
        assert not bars(raw), (line, raw)
    assert (tmp_path / "err1").read_text() == ""


def test_tables_are_coloured_on_a_terminal_only(daemon, client, terminal, tmp_path):
    client.get_or_create("colour-test", workspace=str(tmp_path))
    client.end(client.get_or_create("colour-test", pid=os.getppid(), workspace=str(tmp_path)).session.session_id)
    shown = terminal.command(f"{OMNID} sessions list")
    assert "\x1b[32mlive\x1b[0m" in shown and "\x1b[2mended\x1b[0m" in shown and "\x1b[1mSESSION" in shown
    assert re.search(r"just now|\d+ s ago", shown)
    for line in (
        f"NO_COLOR=1 {OMNID} sessions list", f"{OMNID} --no-color sessions list", f"{OMNID} sessions list | cat",
    ):
        raw = terminal.command(line)
        assert not SGR.search(raw) and "live" in raw, (line, raw)
    forced = subprocess.run([sys.executable, "-m", "omnid", "sessions", "list"], env={**os.environ, "FORCE_COLOR": "1"},
                            capture_output=True, text=True, timeout=60)
    assert "\x1b[32mlive" in forced.stdout
    assert not SGR.search(run_omnid("sessions", "list").stdout), "a pipe gets no colour"


def committed(home: Path) -> int:
    db = sqlite3.connect(f"file:{home / 'omnid.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM sessions").fetchone()[0]
    finally:
        db.close()


def test_ctrl_c_during_an_import_leaves_whole_batches_and_says_how_many(daemon, home, terminal, tmp_path):
    data = export_file(tmp_path / "big.jsonl", 40000)
    terminal.type(f"{OMNID} import {data}; echo RC=$?")
    wait_for(lambda: committed(home) > 0, timeout=120, what="a first batch to be committed")
    terminal.run("send-keys", "C-c")
    rc = wait_for(lambda: re.search(r"RC=(\d+)", terminal.raw()), timeout=60, what="the import to stop").group(1)
    said = re.search(r"omnid: interrupted after (\d+) record\(s\) were committed; rerun to continue", terminal.raw())
    assert rc == "130" and said, terminal.raw()
    n = int(said.group(1))
    assert 0 < n < 40000 and committed(home) == n, "the message says what the database holds"
    db = sqlite3.connect(home / "omnid.db")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()

    again = omnid_json("import", str(data))["records"]["session"]
    assert (again["imported"], again["existing"]) == (40000 - n, n)


def test_ctrl_c_while_the_file_is_checked_writes_nothing(daemon, home, tmp_path):
    """The import reads from a FIFO the test feeds, so the interrupt lands mid-check for sure."""
    fifo = tmp_path / "slow.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "omnid", "import", str(fifo)], stderr=subprocess.PIPE, text=True)
    lines = export_file(tmp_path / "all.jsonl", 2000).read_bytes().splitlines(keepends=True)
    # Opening returns once the import opened the FIFO to check it, its Ctrl-C handler set; it
    # may stop reading (closing the FIFO) as soon as it sees the request, before the rest is fed.
    with contextlib.suppress(BrokenPipeError), fifo.open("wb", buffering=0) as feed:
        feed.write(b"".join(lines[:300]))
        proc.send_signal(signal.SIGINT)
        feed.write(b"".join(lines[300:]))
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.strip()) == (130, "omnid: interrupted: nothing written")
    assert count(home, "sessions") == 0


def test_relative_times():
    now = 1_000_000.0
    cases = {now: "just now", now - 42: "42 s ago", now - 180: "3 min ago", now - 7200: "2 h ago",
             now - 86400 * 3: "3 days ago", now - 86400 * 15: "2 weeks ago", now + 300: "in 5 min", None: "-"}
    assert {ts: ago(ts, now) for ts in cases} == cases


class TerminalStream(io.StringIO):
    """What the bar writes to, standing in for a terminal's stderr."""

    def isatty(self) -> bool:
        return True


def test_the_bar_redraws_at_most_ten_times_a_second():
    stream = TerminalStream()
    started = time.monotonic()
    with Progress("importing", 200_000, stream=stream) as bar:
        for _ in range(200_000):
            bar.advance()
    elapsed = time.monotonic() - started
    draws = stream.getvalue().count("\rimporting")
    assert 1 <= draws <= elapsed * 10 + 2, (draws, elapsed)
    assert stream.getvalue().endswith("\r\x1b[K"), "erased when done"
    bar.done = 30_000
    assert bar.line(bar.started + 2) == (
        "importing [###---------------------] 30,000/200,000 records  15%  15,000 records/s"
    )
    quiet = TerminalStream()
    with Progress("importing", 10, stream=quiet, enabled=False) as bar:
        bar.advance(10)
    assert quiet.getvalue() == ""
