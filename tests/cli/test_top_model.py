"""``omnid top``'s state, keys and column layout, in the test process: events in, rows, totals and widths out."""

from __future__ import annotations

import pytest

from omnid.cli.top.keys import Ui, decode, press
from omnid.cli.top.model import HOUR, LINGER, SORT_NAMES, Board, Row, matches
from omnid.cli.top.view import ago, layout
from omnid_client.protocol import Event

T = 1_000_000.0


def created(seq: int, sid: str, tool: str, at: float = T, workspace: str = "/src/app") -> Event:
    data = {"owner_pid": 100 + seq, "workspace": workspace, "started_at": at}
    return Event(seq, "session.created", at, sid, tool, "prj_1", data)


def test_events_make_rows_move_their_counters_and_end_them_into_the_endings():
    board = Board()
    board.apply(created(1, "s1", "claude"), T)
    board.apply(created(2, "s2", "codex"), T)
    board.apply(Event(3, "message.added", T + 5, "s1", "claude", "prj_1",
                      {"message_count": 2, "total_tokens": 30, "total_cost": 0.5}), T + 5)
    board.apply(Event(4, "session.activity", T + 9, "s2", "codex", "prj_1",
                      {"last_activity": T + 8, "message_count": 1, "total_tokens": 7, "total_cost": 0.0}), T + 9)
    s1, s2 = board.rows["s1"], board.rows["s2"]
    assert (s1.messages, s1.tokens, s1.cost, s1.last_activity, s1.project, s1.pid) == (2, 30, 0.5, T + 5, "app", 101)
    assert (s2.messages, s2.last_activity) == (1, T + 8)
    assert [r.session_id for r in board.visible("active", False, "")] == ["s2", "s1"]
    assert [r.session_id for r in board.visible("msgs", False, "")] == ["s1", "s2"]
    assert [r.session_id for r in board.visible("msgs", True, "")] == ["s2", "s1"]

    ended = Event(5, "session.ended", T + 10, "s1", "claude", "prj_1", {"end_reason": "reaped", "ended_at": T + 10})
    board.apply(ended, T + 10)
    assert board.rows["s1"].end_reason == "reaped" and board.lingering()
    t = board.totals(T + 10)
    assert (t.live, t.by_tool, t.reaped_hour, t.ended_hour, t.messages) == (1, [("codex", 1)], 1, 1, 1)
    board.expire(T + 10 + LINGER - 0.1)
    assert "s1" in board.rows
    board.expire(T + 10 + LINGER)
    assert "s1" not in board.rows and [r.session_id for r in board.recent_endings(T + 20)] == ["s1"]
    assert board.totals(T + 10 + HOUR).reaped_hour == 0 and board.recent_endings(T + 10 + HOUR) == []
    assert board.seq == 5


def test_a_gap_asks_for_a_new_list_and_events_of_unknown_sessions_change_nothing():
    board = Board()
    version = board.version
    assert board.apply(Event(7, "session.ended", T, "nope", "x", None, {"end_reason": "ended"}), T)
    assert board.rows == {} and board.version == version
    assert board.apply(Event(8, "gap", T, data={"from_seq": 1, "to_seq": 5, "reason": "slow", "resume": 5}), T) is False


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("", {"s1", "s2"}),
        ("tool:cla", {"s1"}),
        ("project:other", {"s2"}),
        ("CODEX", {"s2"}),
        ("tool:claude project:other", set()),
        ("s1", {"s1"}),
    ],
)
def test_a_filter_matches_tool_project_or_either(text, shown):
    rows = [Row("s1", "claude", 1, "prj_1", "/src/app", T, T), Row("s2", "codex", 2, "prj_2", "/src/other", T, T)]
    assert {r.session_id for r in rows if matches(r, text)} == shown


def test_terminal_bytes_become_keys():
    assert decode(b"\x1b[A\x1bOBj\x1b[5~\x1b[6~\x1b[1~\x1bOF\r\x7f\x03") == [
        "up", "down", "j", "pgup", "pgdn", "home", "end", "enter", "backspace", "ctrl-c"
    ]
    assert decode(b"\x1b") == ["esc"] and decode("é/".encode()) == ["é", "/"]
    assert decode(b"\x1b[99;5Z") == ["unknown"]


def test_keys_change_sort_filter_selection_and_view():
    ui, order = Ui(), ["a", "b", "c"]
    assert press(ui, "s", order) is None and ui.sort == SORT_NAMES[1]
    press(ui, "S", order)
    press(ui, "S", order)
    assert ui.sort == SORT_NAMES[-1]
    press(ui, "r", order)
    assert ui.reverse
    for key in ["/", "t", "o", "x", "backspace", "o", "enter"]:
        press(ui, key, order)
    assert ui.filter == "too" and ui.editing is None
    press(ui, "/", order)
    press(ui, "q", order)  # typed into the filter, not quitting
    assert press(ui, "esc", order) is None and ui.filter == "too" and ui.editing is None
    press(ui, "esc", order)
    assert ui.filter == ""
    ui.selected = "a"
    press(ui, "end", order)
    assert ui.selected == "c"
    press(ui, "k", order)
    assert ui.selected == "b"
    assert press(ui, "enter", order) == "open" and ui.view == "detail"
    assert press(ui, "q", order) is None and ui.view == "list"
    press(ui, "?", order)
    assert ui.view == "help" and press(ui, "x", order) is None and ui.view == "list"
    assert press(ui, "q", order) == "quit" and press(ui, "ctrl-c", order) == "quit"


@pytest.mark.parametrize(
    ("width", "headers"),
    [
        (200, ["SESSION", "TOOL", "PID", "PROJECT", "AGE", "ACTIVE", "MSGS", "TOKENS", "COST"]),
        (80, ["SESSION", "TOOL", "PID", "PROJECT", "AGE", "ACTIVE", "MSGS", "TOKENS", "COST"]),
        (60, ["SESSION", "TOOL", "PROJECT", "AGE", "ACTIVE", "MSGS"]),
        (40, ["SESSION", "TOOL", "PROJECT", "ACTIVE"]),
        (21, ["SESSION", "TOOL"]),
        (12, ["SESSION"]),
    ],
)
def test_columns_leave_in_priority_order_and_never_overflow(width, headers):
    cols = layout(width)
    assert [c.header for c, _ in cols] == headers
    assert sum(w for _, w in cols) + len(cols) - 1 <= width


def test_ages_are_compact():
    assert [ago(s) for s in (-3, 0, 59, 60, 3599, 3600, 3660, 86400 + 7200)] == [
        "0s", "0s", "59s", "1m", "59m", "1h00m", "1h01m", "1d02h"
    ]
