"""``omnid top`` in a real terminal (tmux) and through a pipe, watching a real daemon's sessions come and go."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from omnid.cli.top.feed import Feed, Snapshot
from omnid.cli.top.model import LINGER
from omnid_client import Client, Session
from omnid_client.protocol import Event
from tests.helpers import Tmux, ev, run_omnid, wait_for

TOP = f"{sys.executable} -m omnid top"
ROW = re.compile(r"^[0-9a-f]{8} \S")


def own(client: Client, spawn_owner, tool: str, workspace: Path) -> tuple[Session, subprocess.Popen]:
    """A live session of ``tool`` owned by a real child process (killed: reaped)."""
    proc = spawn_owner()
    return client.get_or_create(tool, pid=proc.pid, workspace=str(workspace), dedup=False).session, proc


def open_top(tmux, *args: str, width: int = 80, height: int = 24) -> Tmux:
    """``omnid top ARGS`` in a terminal of that size; the terminal's settings are saved before
    it starts and after it exits (before/after), and its exit status is printed."""
    script = f"stty -g > before; {TOP} {' '.join(args)}; echo EXIT=$?; stty -g > after; exec sleep 600"
    term = tmux(["sh", "-c", script], width=width, height=height)
    wait_for(lambda: term.visible()[0].startswith("omnid top"), what="top's first frame")
    return term


def rows(term: Tmux) -> list[str]:
    return [line for line in term.visible() if ROW.match(line)]


def row_of(term: Tmux, session: Session) -> str | None:
    return next((r for r in rows(term) if r.startswith(session.session_id[:8])), None)


def tools_in_order(term: Tmux) -> list[str]:
    return [r.split()[1] for r in rows(term)]


def quit_and_check_restored(term: Tmux, tmp_path: Path) -> None:
    wait_for(lambda: "EXIT=0" in term.screen(), what="top to exit with status 0")
    wait_for(lambda: (tmp_path / "after").exists() and (tmp_path / "after").read_text(), what="stty after")
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text(), "terminal mode not restored"
    assert "omnid top" not in term.screen(), "the alternate screen was not left"


def test_sessions_appear_as_they_start_and_a_reaped_one_is_shown_reaped_then_listed_as_an_ending(
    daemon, client, tmux, spawn_owner, tmp_path
):
    a, a_owner = own(client, spawn_owner, "alpha", tmp_path)
    term = open_top(tmux)
    wait_for(lambda: row_of(term, a), what="the first session's row")
    b, _ = own(client, spawn_owner, "beta", tmp_path)
    wait_for(lambda: row_of(term, b), what="a session started while top runs")
    assert "2 live (" in term.visible()[0]
    a_owner.kill()
    row = wait_for(lambda: (r := row_of(term, a)) and "reaped" in r and r, what="the killed owner's session as reaped")
    assert row.split()[1] == "alpha"
    wait_for(lambda: "1 reaped" in term.visible()[0] and "1 live (beta 1)" in term.visible()[0], what="the totals")
    strip = wait_for(
        lambda: row_of(term, a) is None and term.visible()[-2], timeout=LINGER + 10, what="the row to leave"
    )
    assert strip.startswith("recent endings:") and f"alpha {a.session_id[:8]} reaped" in strip
    term.keys("q")
    quit_and_check_restored(term, tmp_path)


def test_keys_sort_filter_and_open_a_session_with_its_context_and_messages(daemon, client, tmux, spawn_owner, tmp_path):
    made = {tool: own(client, spawn_owner, tool, tmp_path)[0] for tool in ("gamma", "alpha", "beta")}
    client.add_message(made["beta"].session_id, "user", "the beta question\nwith a second line")
    client.add_message(made["beta"].session_id, "assistant", "the beta answer", tokens_used=1234)
    client.append_context(made["beta"].session_id, [ev("decision", "use sqlite")])
    term = open_top(tmux)
    wait_for(lambda: len(rows(term)) == 3, what="three rows")
    assert tools_in_order(term)[0] == "beta"  # the most recently active first
    term.keys("s", "s")  # active -> age -> tool
    wait_for(lambda: tools_in_order(term) == ["alpha", "beta", "gamma"], what="sorted by tool")
    assert "TOOL▲" in term.visible()[2] and "sort: tool" in term.visible()[1]
    term.keys("r")
    wait_for(lambda: tools_in_order(term) == ["gamma", "beta", "alpha"], what="reversed")

    term.keys("/", *"tool:al")
    wait_for(lambda: "filter: tool:al" in term.visible()[-1], what="the filter being typed")
    term.keys("Enter")
    wait_for(lambda: tools_in_order(term) == ["alpha"], what="only alpha")
    assert "filter: tool:al" in term.visible()[1]
    term.keys("Escape")
    wait_for(lambda: len(rows(term)) == 3, what="the filter cleared")

    term.keys("Home", "Down", "Enter")  # reversed by tool: gamma, beta, alpha (alpha stayed selected)
    detail = wait_for(lambda: "recent messages" in (s := term.screen()) and s, what="the detail view")
    assert made["beta"].session_id in detail and "decided  use sqlite" in detail
    assert "the beta question" in detail and "with a second line" not in detail and "the beta answer" in detail
    client.add_message(made["beta"].session_id, "user", "a follow-up")
    wait_for(lambda: "a follow-up" in term.screen(), what="the detail view to follow the session")
    client.end(made["beta"].session_id)
    wait_for(lambda: f"{made['beta'].session_id}  beta  ended" in term.screen(), what="the session shown ended")
    term.keys("Escape")
    wait_for(lambda: len(rows(term)) == 2, timeout=LINGER + 10, what="back to the list, the ended session gone")
    term.keys("?")
    wait_for(lambda: "omnid top: keys" in term.screen(), what="the help")
    term.keys("x")
    wait_for(lambda: len(rows(term)) == 2, what="back from the help")
    term.keys("q")
    quit_and_check_restored(term, tmp_path)


def test_80x24_keeps_every_line_in_place_and_narrower_terminals_drop_columns(
    daemon, client, tmux, spawn_owner, tmp_path
):
    for i in range(30):
        client.get_or_create(f"tool-with-a-long-name-{i}", pid=spawn_owner().pid, workspace=str(tmp_path), dedup=False)
    term = open_top(tmux)
    wait_for(lambda: len(rows(term)) == 18, what="a screenful of rows")
    screen = term.visible()
    assert len(screen) == 24 and all(len(line) <= 80 for line in screen)
    assert screen[0].startswith("omnid top") and "30 live" in screen[0]
    assert screen[2].split() == ["SESSION", "TOOL", "PID", "PROJECT", "AGE", "ACTIVE▼", "MSGS", "TOKENS", "COST"]
    assert all(ROW.match(line) for line in screen[3:21]) and all("…" in line.split()[1] for line in screen[3:21])
    assert screen[22].startswith("recent endings") and screen[23].startswith("q quit")
    term.run("resize-window", "-x", "52", "-y", "12")
    wait_for(lambda: len(term.visible()) == 12 and len(rows(term)) == 6, what="the frame redrawn for 52x12")
    screen = term.visible()
    assert screen[2].split() == ["SESSION", "TOOL", "PROJECT", "ACTIVE▼", "MSGS"], screen
    assert screen[-1].startswith("q quit") and all(ROW.match(line) for line in screen[3:9])
    for _ in range(40):
        term.keys("j")  # the selection scrolls the table; the frame keeps its shape
    last = json.loads(run_omnid("top", "--json").stdout)["sessions"][-1]["session_id"]
    wait_for(lambda: rows(term) and rows(term)[-1].startswith(last[:8]), what="the table scrolled to the last row")
    assert len(term.visible()) == 12 and term.visible()[-1].startswith("q quit")
    term.keys("q")
    quit_and_check_restored(term, tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_top_cleanly_and_restores_the_terminal(signum, daemon, tmux, tmp_path):
    term = open_top(tmux)
    [top] = wait_for(lambda: [p for p in psutil.Process(term.pane_pid()).children() if "top" in p.cmdline()],
                     what="top's process")
    os.kill(top.pid, signum)
    quit_and_check_restored(term, tmp_path)
    assert "Traceback" not in term.screen()


def test_a_restarted_daemon_gets_a_reconnecting_banner_and_then_the_new_state(
    home, start_daemon, tmux, spawn_owner, tmp_path
):
    d = start_daemon()
    with d.client() as c:
        a, _ = own(c, spawn_owner, "alpha", tmp_path)
    term = open_top(tmux)
    wait_for(lambda: row_of(term, a), what="the session")
    assert d.stop() == 0
    wait_for(lambda: "reconnecting" in term.visible()[1], what="the reconnecting banner")
    assert row_of(term, a), "the last state stays on screen"
    d = start_daemon()
    with d.client() as c:
        b, _ = own(c, spawn_owner, "beta", tmp_path)
    wait_for(lambda: row_of(term, b) and "reconnecting" not in term.visible()[1], what="the new daemon's state")
    term.keys("q")
    quit_and_check_restored(term, tmp_path)


def test_through_a_pipe_top_prints_plain_frames_as_things_change(daemon, client, spawn_owner, tmp_path):
    a, _ = own(client, spawn_owner, "alpha", tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", "top", "--interval", "0.2"], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def frame_with(session: Session) -> str | None:
        """The first whole frame (its closing empty line printed) that lists ``session``."""
        frames = "".join(out).split("\n\n")[:-1]  # the last one may still be being printed
        return next((f for f in frames if any(line.startswith(session.session_id[:8]) for line in f.splitlines())),
                    None)

    try:
        # A loaded machine can take long to start a Python that imports rich: the deadlines only guard a hang.
        first = wait_for(lambda: frame_with(a), timeout=60, what="the first frame")
        b, _ = own(client, spawn_owner, "beta", tmp_path)
        later = wait_for(lambda: frame_with(b), timeout=60, what="a frame with the new session")
        assert first.startswith("omnid top") and "1 live" in first, first
        assert later.startswith("omnid top") and "2 live" in later, later
        assert "\x1b" not in "".join(out) and "q quit" not in "".join(out)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=60)
    assert proc.stderr is not None and proc.stderr.read() == ""


def test_once_and_json_print_one_snapshot(daemon, client, spawn_owner, tmp_path):
    a, _ = own(client, spawn_owner, "alpha", tmp_path)
    client.add_message(a.session_id, "user", "hi", tokens_used=42, cost_usd=0.5)
    b, _ = own(client, spawn_owner, "beta", tmp_path)
    client.end(b.session_id)
    r = run_omnid("top", "--once")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("omnid top") and "1 live (alpha 1)" in lines[0] and "1 ended" in lines[0]
    assert [line for line in lines if ROW.match(line)][0].split()[:2] == [a.session_id[:8], "alpha"]
    assert f"beta {b.session_id[:8]} ended" in r.stdout
    # The reuse rate shows where the daemon counts it (daemon.metrics, issue 18): here 0 of 2 calls reused.
    assert ("reuse 0%" in lines[1]) == hasattr(Client, "metrics"), lines[1]
    r = run_omnid("top", "--json", "--filter", "tool:alpha")
    snap = json.loads(r.stdout)
    assert [s["session_id"] for s in snap["sessions"]] == [a.session_id]
    assert snap["sessions"][0]["total_tokens"] == 42 and snap["totals"]["by_tool"] == {"alpha": 1}
    assert snap["recent_endings"] == [] and snap["totals"]["ended_hour"] == 1


def test_without_a_daemon_top_says_so_and_starts_none(home):
    r = run_omnid("top")
    assert r.returncode == 3 and "not running" in r.stderr and "never starts it" in r.stderr, r.stderr
    assert json.loads(run_omnid("top", "--json").stdout)["error"]["code"] == "unavailable"
    assert not (home / "run" / "omnid.sock").exists()


def test_without_rich_top_says_how_to_install_it(daemon):
    hide = "import sys; sys.modules['rich'] = None; sys.argv = ['omnid', 'top']; from omnid.cli import run; run()"
    r = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "pip install 'omnid[top]'" in r.stderr and "Traceback" not in r.stderr


def test_a_gap_makes_the_feed_list_the_sessions_again_then_follow_on(daemon, client, spawn_owner, tmp_path):
    a, _ = own(client, spawn_owner, "alpha", tmp_path)
    feed = Feed(10**9, None)  # a sequence number this daemon never reached: as if its event log was lost
    feed.start()
    try:
        gap = feed.messages.get(timeout=10)
        assert isinstance(gap, Event) and gap.kind == "gap" and gap.data["reason"] == "reset", gap
        snap = feed.messages.get(timeout=10)
        assert isinstance(snap, Snapshot) and [s.session_id for s in snap.live] == [a.session_id]
        b, _ = own(client, spawn_owner, "beta", tmp_path)
        created = feed.messages.get(timeout=10)
        assert isinstance(created, Event) and (created.kind, created.session_id) == ("session.created", b.session_id)
        assert created.seq == snap.head + 1
    finally:
        feed.stopped = True
