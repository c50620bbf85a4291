"""The loops of ``omnid top``: full screen on a terminal, plain frames on a pipe, waking for events, keys and ticks.

On a terminal the keyboard is read in raw mode (termios) and the view drawn on the
alternate screen; the terminal's mode and screen are put back on every way out: q, Ctrl-C,
SIGINT, SIGTERM, SIGHUP, an error.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import sys
import termios
import time
from typing import Any, Iterator

from rich.console import Console, Group
from rich.live import Live

from omnid_client import OmnidError

from .feed import Feed, client, take
from .keys import Ui, decode, press
from .model import Board
from .view import frame

MIN_FRAME = 0.05
"""Seconds between two frames at least, however fast events come."""
DETAIL_MESSAGES = 8
DETAIL_EVERY = 0.5
"""Seconds between two reads of the open session's detail, at least, while events come."""


class Stop(Exception):
    """A signal asked top to end."""


def _stop(signum: int, _frame: Any) -> None:
    raise Stop(signum)


@contextlib.contextmanager
def raw_keys(fd: int) -> Iterator[None]:
    """Keys as they are typed, unechoed, Ctrl-C and Ctrl-S as bytes; output processing kept."""
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.IXON | termios.ICRNL | termios.INLCR | termios.ISTRIP)
    mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def signals(wake: int | None) -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT end the loop (as ``Stop``); SIGWINCH wakes it to redraw."""
    handled = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]
    before = {s: signal.signal(s, _stop) for s in handled}
    if wake is not None:
        before[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: _poke(wake))
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"w")


def drain(board: Board, feed: Feed, block: float | None = 0) -> bool:
    """Apply every message the feed has for us (waiting up to ``block`` seconds for the
    first); True if there was one."""
    got = False
    while True:
        try:
            message = feed.messages.get(timeout=block) if block != 0 and not got else feed.messages.get_nowait()
        except queue.Empty:
            return got
        take(board, message, time.time())
        got = True


def load_detail(ui: Ui) -> None:
    """Fill the detail view: the session, its context and its last messages."""
    sid = ui.selected
    if sid is None:
        return
    try:
        with client() as c:
            s = c.get(sid)
            ctx = c.get_context(sid, max_files=5, max_searches=3, max_decisions=3, max_memories=1, max_changes=3)
            messages = c.list_messages(sid, limit=DETAIL_MESSAGES, after_seq=max(0, s.message_count - DETAIL_MESSAGES))
        ui.detail = {"session": s, "context": ctx, "messages": messages.messages, "at": time.monotonic()}
    except (OmnidError, OSError) as e:
        ui.detail = {"error": f"cannot read session {sid}: {e}"}


def run_screen(board: Board, ui: Ui, console: Console, head: int) -> int:
    """Full screen until q (or a signal); returns the exit status."""
    fd = sys.stdin.fileno()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    feed = Feed(head, wake_w)
    live = Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
    try:
        with signals(wake_w), raw_keys(fd), live:
            feed.start()
            _loop(board, ui, console, live, feed, fd, wake_r)
    except (Stop, KeyboardInterrupt):
        pass
    finally:
        feed.wake = None  # the pipe stays open until the process exits: a late write finds it
    return 0


def _loop(board: Board, ui: Ui, console: Console, live: Live, feed: Feed, fd: int, wake: int) -> None:
    drawn_at = 0.0
    drawn: tuple[Any, ...] = ()
    while True:
        now = time.time()
        board.expire(now)
        if ui.view == "detail" and ui.selected in board.changed:
            ui.detail["stale"] = True
        board.changed.clear()
        if ui.detail.get("stale") and time.monotonic() - ui.detail.get("at", 0) >= DETAIL_EVERY:
            load_detail(ui)  # something happened to this session
        rows = board.visible(ui.sort, ui.reverse, ui.filter)
        order = [r.session_id for r in rows]
        if ui.view == "list" and ui.selected not in order:
            ui.selected = order[0] if order else None
        # The terminal's size now, whatever COLUMNS and LINES said when top started.
        width, height = console.size = os.get_terminal_size(fd)
        state = (board.version, int(now), width, height, repr(ui))
        wait: float | None = None
        if state != drawn:
            due = drawn_at + MIN_FRAME - time.monotonic()
            if due <= 0:
                live.update(Group(*frame(board, ui, width, height, now)), refresh=True)
                drawn, drawn_at = state, time.monotonic()
            else:
                wait = due
        if wait is None and (board.rows or board.recent_endings(now) or ui.view == "detail"):
            wait = 1.0 - now % 1.0  # ages and "ago"s move on each second
            if ui.detail.get("stale"):
                wait = min(wait, DETAIL_EVERY)
        ready, _, _ = select.select([fd, wake], [], [], wait)
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 4096)
        drain(board, feed)
        if fd in ready:
            data = os.read(fd, 1024)
            if not data:
                return  # the terminal is gone
            for key in decode(data):
                action = press(ui, key, order)
                if action == "quit":
                    return
                if action == "open":
                    ui.detail = {}
                    load_detail(ui)


def run_plain(board: Board, console: Console, ui: Ui, head: int, interval: float) -> int:
    """Not a terminal: a frame now, then one whenever something changed, at most every
    ``interval`` seconds, until a signal (or the reader goes away)."""
    feed = Feed(head, None)
    printed_at = -interval
    printed = -1
    try:
        with signals(None):
            feed.start()
            while True:
                now = time.time()
                board.expire(now)
                since = time.monotonic() - printed_at
                if board.version != printed and since >= interval:
                    print_frame(board, ui, console, now)
                    printed, printed_at = board.version, time.monotonic()
                    continue
                if board.version != printed:
                    block: float | None = interval - since
                else:
                    block = 1.0 if board.lingering() else None
                drain(board, feed, block)
                board.changed.clear()  # only a detail view reads it
    except (Stop, KeyboardInterrupt):
        pass
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, not even at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def print_frame(board: Board, ui: Ui, console: Console, now: float) -> None:
    """One plain frame, the whole table, then an empty line."""
    console.print(Group(*frame(board, ui, console.width, None, now)))
    console.print()
    console.file.flush()
