"""``omnid top``: a live full-screen view of the sessions on this machine, like htop, fed by the daemon's events.

It needs the optional ``rich`` package (``pip install 'omnid[top]'``) for everything but
``--json``, and only watches: it never starts a daemon.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

import click

from omnid_client import OmnidError, Unavailable

from .._text import EXIT_NOT_RUNNING, echo, print_json, report_error
from .feed import client, snapshot
from .keys import Ui
from .model import Board

INSTALL = "omnid top needs the 'rich' package: pip install 'omnid[top]' (or pip install 'rich>=13')"


@click.command("top")
@click.option("--once", is_flag=True, help="Print one frame of the view and exit.")
@click.option("--filter", "filter_text", default="", metavar="TEXT",
              help="Start filtered: words that must all match (tool:NAME, project:NAME, or either).")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="When stdout is not a terminal: print a frame at most this often (seconds), when something changed.")
@click.option("--json", "as_json", is_flag=True, help="Print one snapshot as JSON and exit.")
def top(once: bool, filter_text: str, interval: float, as_json: bool) -> None:
    """Watch sessions start, work, end and get reaped, live (keys: ? in the view). When
    stdout is not a terminal, prints a plain frame each time something changes instead."""
    if not as_json:
        try:
            from rich.console import Console
        except ImportError:
            echo(INSTALL, err=True)
            sys.exit(1)
    try:
        with client() as c:
            snap = snapshot(c)
    except Unavailable as e:
        if as_json:
            sys.exit(report_error(e, True))
        echo(f"omnid top: {e}.", err=True)
        echo("omnid top only watches and never starts it: start it with `omnid serve` (or any omnid command).",
             err=True)
        sys.exit(EXIT_NOT_RUNNING)
    except (OmnidError, OSError) as e:
        sys.exit(report_error(e, as_json))
    board = Board()
    now = time.time()
    board.load(snap.head, snap.live, snap.ended, now)
    board.metrics = snap.metrics
    ui = Ui(filter=filter_text.strip())
    if as_json:
        print_json(snapshot_json(board, ui, now))
        return
    from .screen import print_frame, run_plain, run_screen

    console = Console(highlight=False)
    if once:
        print_frame(board, ui, console, now)
    elif sys.stdout.isatty() and sys.stdin.isatty():
        sys.exit(run_screen(board, ui, console, snap.head))
    else:
        sys.exit(run_plain(board, console, ui, snap.head, interval))


def snapshot_json(board: Board, ui: Ui, now: float) -> Any:
    """The snapshot as the ``TopSnapshot`` struct (``omnid schema top``), so its times print as the
    other commands' do."""
    import msgspec

    from ..schemas import TopSnapshot

    rows = board.visible(ui.sort, ui.reverse, ui.filter)
    return msgspec.convert({
        "at": now,
        "event_seq": board.seq,
        "metrics": asdict(board.metrics) if board.metrics is not None else None,
        "totals": asdict(board.totals(now)) | {"by_tool": dict(board.totals(now).by_tool)},
        "sessions": [r.as_dict() for r in rows],
        "recent_endings": [r.as_dict() for r in board.recent_endings(now, ui.filter)],
    }, TopSnapshot)
