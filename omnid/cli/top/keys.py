"""The keys of ``omnid top``: what a terminal's bytes mean, and what each key does to the view's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import SORT_NAMES

KEYS = {
    b"\x1b[A": "up", b"\x1bOA": "up", b"\x1b[B": "down", b"\x1bOB": "down",
    b"\x1b[5~": "pgup", b"\x1b[6~": "pgdn", b"\x1b[H": "home", b"\x1b[F": "end", b"\x1bOH": "home", b"\x1bOF": "end",
    b"\x1b[1~": "home", b"\x1b[4~": "end", b"\x1b[D": "left", b"\x1b[C": "right",
    b"\r": "enter", b"\n": "enter", b"\x7f": "backspace", b"\x08": "backspace", b"\x1b": "esc",
    b"\x03": "ctrl-c", b"\x04": "ctrl-d", b"\x0c": "ctrl-l", b"\x15": "ctrl-u", b"\t": "tab",
}
HELP = (
    ("q, Ctrl-C", "quit (in a detail or help view: back)"),
    ("↑ ↓ / j k", "select a session (PgUp PgDn Home End)"),
    ("Enter", "open the selected session: its context and recent messages"),
    ("Esc, q", "back from a detail or help view"),
    ("s / S", "sort by the next / previous column"),
    ("r", "reverse the sort order"),
    ("/ or f", "filter: type words (tool:NAME, project:NAME, or either), Enter"),
    ("Esc", "clear the filter"),
    ("?, h", "this help"),
)


def decode(data: bytes) -> list[str]:
    """Keys in what one read of the terminal returned (a key's bytes arrive together)."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        if data[i] == 0x1B and i + 1 < len(data) and data[i + 1] in b"[O":
            end = i + 2
            while end < len(data) and not 0x40 <= data[end] <= 0x7E:
                end += 1
            keys.append(KEYS.get(data[i : end + 1], "unknown"))
            i = end + 1
            continue
        one = data[i : i + 1]
        if one in KEYS:
            keys.append(KEYS[one])
            i += 1
            continue
        # A printable character (possibly several bytes of UTF-8).
        length = 1
        if data[i] >= 0xC0:
            length = 2 if data[i] < 0xE0 else 3 if data[i] < 0xF0 else 4
        keys.append(data[i : i + length].decode("utf-8", "replace"))
        i += length
    return keys


@dataclass
class Ui:
    """What the person chose: sort, filter, the selected session, and which view is up."""

    sort: str = "active"
    reverse: bool = False
    filter: str = ""
    editing: str | None = None
    """The filter being typed (None: not typing one)."""
    selected: str | None = None
    """The selected session's id."""
    view: str = "list"
    """"list", "detail" or "help"."""
    detail: dict[str, Any] = field(default_factory=dict)
    """What the detail view shows (the view fills it)."""
    page: int = 10
    """Rows a page key moves by (the view sets it from the screen's height)."""


def press(ui: Ui, key: str, order: list[str]) -> str | None:
    """Apply ``key`` to ``ui``; ``order`` is the session ids as the table lists them. Returns
    "quit" or "open" (the detail view needs loading), else None."""
    if ui.editing is not None:
        return _edit(ui, key)
    if key in ("ctrl-c", "ctrl-d"):
        return "quit"
    if ui.view != "list":
        if key in ("esc", "q", "left", "backspace") or ui.view == "help":
            ui.view = "list"
            ui.detail = {}
        return None
    if key == "q":
        return "quit"
    if key in ("?", "h"):
        ui.view = "help"
    elif key in ("s", "S", ">", "<"):
        step = 1 if key in ("s", ">") else -1
        ui.sort = SORT_NAMES[(SORT_NAMES.index(ui.sort) + step) % len(SORT_NAMES)]
    elif key in ("r", "R"):
        ui.reverse = not ui.reverse
    elif key in ("/", "f", "F"):
        ui.editing = ui.filter
    elif key == "esc":
        ui.filter = ""
    elif key in ("enter", "right") and ui.selected in order:
        ui.view = "detail"
        return "open"
    else:
        _move(ui, key, order)
    return None


def _edit(ui: Ui, key: str) -> str | None:
    text = ui.editing or ""
    if key == "enter":
        ui.filter, ui.editing = text.strip(), None
    elif key in ("esc", "ctrl-c"):
        ui.editing = None
    elif key == "backspace":
        ui.editing = text[:-1]
    elif key == "ctrl-u":
        ui.editing = ""
    elif len(key) == 1 and key.isprintable():
        ui.editing = (text + key)[:80]
    return None


def _move(ui: Ui, key: str, order: list[str]) -> None:
    if not order:
        return
    at = order.index(ui.selected) if ui.selected in order else 0
    moves = {"up": -1, "k": -1, "down": 1, "j": 1, "pgup": -ui.page, "pgdn": ui.page}
    if key in moves:
        at += moves[key]
    elif key in ("home", "g"):
        at = 0
    elif key in ("end", "G"):
        at = len(order) - 1
    else:
        return
    ui.selected = order[max(0, min(at, len(order) - 1))]
