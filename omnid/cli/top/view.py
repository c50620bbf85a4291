"""How ``omnid top`` draws a frame: lines of rich ``Text``, each cut to the terminal's width, never wrapped.

Columns leave in priority order when the terminal is narrow; the table gets whatever height
the header, the endings strip and the key line leave it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from rich.text import Text

from .keys import HELP, Ui
from .model import LINGER, SORTS, Board, Metrics, Row

NEW = 3.0
"""Seconds a new session is highlighted."""


def ago(seconds: float) -> str:
    """A compact age: 42s, 12m, 3h05m, 2d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def count(n: int) -> str:
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.0f}k" if n >= 100_000 else f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def money(cost: float) -> str:
    return "$0" if cost == 0 else f"${cost:.2f}" if cost >= 0.01 else f"${cost:.4f}"


@dataclass(frozen=True)
class Column:
    header: str
    width: int
    cell: Callable[[Row, float], str]
    right: bool = False
    sort: str | None = None


COLUMNS = (
    Column("SESSION", 8, lambda r, now: r.session_id[:8]),
    Column("TOOL", 12, lambda r, now: r.tool, sort="tool"),
    Column("PROJECT", 10, lambda r, now: r.project, sort="project"),
    Column("ACTIVE", 7, lambda r, now: r.end_reason or ago(now - r.last_activity), True, "active"),
    Column("MSGS", 5, lambda r, now: count(r.messages), True, "msgs"),
    Column("AGE", 7, lambda r, now: ago(now - r.started_at), True, "age"),
    Column("PID", 7, lambda r, now: str(r.pid or "-"), True, "pid"),
    Column("TOKENS", 7, lambda r, now: count(r.tokens), True, "tokens"),
    Column("COST", 7, lambda r, now: money(r.cost), True, "cost"),
)
"""In priority order: the last ones leave first when the terminal is narrow."""
ORDER = ("SESSION", "TOOL", "PID", "PROJECT", "AGE", "ACTIVE", "MSGS", "TOKENS", "COST")
"""The order they are shown in."""
PROJECT_MAX = 32


def fit(text: str, width: int, right: bool = False) -> str:
    if len(text) > width:
        return text[: max(width - 1, 0)] + "…" if width > 1 else text[:width]
    return text.rjust(width) if right else text.ljust(width)


def layout(width: int) -> list[tuple[Column, int]]:
    """The columns that fit in ``width`` (one space between two), in showing order, with
    their widths: PROJECT takes what is left over, up to PROJECT_MAX."""
    kept: list[Column] = []
    for col in COLUMNS:
        if sum(c.width for c in kept) + col.width + len(kept) > width:
            break
        kept.append(col)
    spare = width - sum(c.width for c in kept) - (len(kept) - 1)
    shown = sorted(kept, key=lambda c: ORDER.index(c.header))
    return [(c, c.width + min(spare, PROJECT_MAX - c.width) if c.header == "PROJECT" else c.width) for c in shown]


def line(text: str | Text, style: str = "") -> Text:
    t = text if isinstance(text, Text) else Text(text, style=style)
    t.no_wrap = True
    t.overflow = "ellipsis"
    return t


def row_style(row: Row, now: float, selected: bool) -> str:
    style = ""
    if row.end_reason == "reaped":
        style = "yellow"
    elif row.ended_at is not None:
        style = "dim"
    elif now - row.started_at < NEW:
        style = "bold green"
    return f"{style} reverse".strip() if selected else style


def table(rows: list[Row], ui: Ui, width: int, height: int, now: float) -> list[Text]:
    """The header line and up to ``height - 1`` rows, scrolled to keep the selection shown."""
    cols = layout(width)
    arrow = "▲" if SORTS[ui.sort][1] == ui.reverse else "▼"
    head = " ".join(fit(c.header + (arrow if c.sort == ui.sort else ""), w, c.right) for c, w in cols)
    out = [line(head, "bold reverse" if ui.view == "list" else "bold")]
    body = max(height - 1, 0)
    ids = [r.session_id for r in rows]
    at = ids.index(ui.selected) if ui.selected in ids else 0
    start = min(max(at - body + 1, 0), max(len(rows) - body, 0)) if body else 0
    for i, row in enumerate(rows[start : start + body], start):
        text = " ".join(fit(c.cell(row, now), w, c.right) for c, w in cols)
        out.append(line(text, row_style(row, now, i == at and ui.selected is not None)))
    if not rows:
        out.append(line("  no live sessions" + (f" matching {ui.filter!r}" if ui.filter else ""), "dim"))
    return out


def header(board: Board, ui: Ui, now: float) -> list[Text]:
    t = board.totals(now)
    tools = ", ".join(f"{tool} {n}" for tool, n in t.by_tool[:4]) + (" …" if len(t.by_tool) > 4 else "")
    first = Text.assemble(
        ("omnid top", "bold"), time.strftime(" %H:%M:%S", time.localtime(now)),
        f"  {t.live} live", (f" ({tools})" if tools else ""),
        "  last hour: ", (f"{t.reaped_hour} reaped", "yellow" if t.reaped_hour else ""), f", {t.ended_hour} ended",
    )
    if board.down is not None:
        second = line(f" reconnecting: the daemon is not answering ({board.down}); showing the last state",
                      "bold white on red")
    else:
        order = f"{ui.sort} {'reversed' if ui.reverse else ''}".strip()
        filt = f"  filter: {ui.filter}" if ui.filter else ""
        second = line(f"sort: {order}{filt}  msgs {count(t.messages)}  tokens {count(t.tokens)}  cost {money(t.cost)}"
                      + reuse(board.metrics))
    return [line(first), second]


def reuse(m: Metrics | None) -> str:
    """The reuse rate and get_or_create's latency, for the header, when the daemon counts them."""
    if m is None or m.reuse_rate is None:
        return ""
    text = f"  reuse {m.reuse_rate:.0%}"
    if m.p50 is not None and m.p99 is not None:
        text += f" (p50 {m.p50 * 1000:.2g}ms p99 {m.p99 * 1000:.2g}ms)"
    return text


def endings(board: Board, ui: Ui, now: float) -> Text:
    recent = board.recent_endings(now, ui.filter)
    if not recent:
        return line("recent endings: none in the last hour", "dim")
    text = Text("recent endings: ", style="dim")
    for i, row in enumerate(recent[:6]):
        text.append(" · " if i else "")
        text.append(f"{row.tool} {row.session_id[:8]} {row.end_reason} {ago(now - (row.ended_at or now))} ago",
                    "yellow" if row.end_reason == "reaped" else "")
    return line(text)


def keyline(ui: Ui) -> Text:
    if ui.editing is not None:
        prompt = Text.assemble(("filter: ", "bold"), ui.editing, ("█", "blink"), ("  Enter apply, Esc cancel", "dim"))
        return line(prompt)
    if ui.view == "detail":
        return line("Esc/q back  ?: help", "reverse")
    return line("q quit  ↑↓ select  Enter open  s sort  r reverse  / filter  ? help", "reverse")


def frame(board: Board, ui: Ui, width: int, height: int | None, now: float) -> list[Text]:
    """One screen (``height`` None: the whole table, for a pipe)."""
    if ui.view == "help":
        return help_lines(height)
    if ui.view == "detail":
        return header(board, ui, now) + detail(ui.detail, width, (height or 40) - 3, now) + [keyline(ui)]
    rows = board.visible(ui.sort, ui.reverse, ui.filter)
    body = (height - 5) if height is not None else len(rows) + 1
    ui.page = max(body - 2, 1)
    out = header(board, ui, now) + table(rows, ui, width, body, now)
    if height is not None:
        out += [line("")] * (height - 2 - len(out))
    return out + [endings(board, ui, now)] + ([keyline(ui)] if height is not None else [])


def help_lines(height: int | None) -> list[Text]:
    out = [line("omnid top: keys", "bold"), line("")]
    out += [line(Text.assemble((f"  {key:<12}", "bold"), what)) for key, what in HELP]
    out += [
        line(""),
        line(f"Bold green: started in the last {NEW:.0f}s. Yellow: reaped (its process died), dim: ended;"),
        line(f"an ended session stays {LINGER:.0f}s, then moves to the recent endings strip."),
        line(""),
        line("any key: back", "reverse"),
    ]
    return out[:height] if height else out


def detail(data: dict[str, Any], width: int, height: int, now: float) -> list[Text]:
    """One session: its fields, context (files, decisions, searches, changes) and last messages."""
    if "session" not in data:
        out = [line(data.get("error", "loading…"), "red" if "error" in data else "dim")]
        return out + [line("")] * (height - 1)
    s = data["session"]
    state = "live" if s.ended_at is None else f"{s.end_reason} {ago(now - s.ended_at)} ago"
    out = [
        line(Text.assemble((s.session_id, "bold"), f"  {s.tool_id}  {state}" + (f"  {s.title}" if s.title else ""))),
        line(f"pid {s.owner_pid or '-'}  project {s.project_id or '-'}  workspace {s.workspace or '-'}"),
        line(f"age {ago(now - s.started_at)}  active {ago(now - s.last_activity)} ago  messages {s.message_count}  "
             f"tokens {s.total_tokens}  cost {money(s.total_cost)}"),
    ]
    ctx = data.get("context")
    context: list[Text] = []
    if ctx is not None:
        context += [line(f"  file     {f.path}  ×{f.accesses}") for f in ctx.files[:5]]
        context += [line(f"  change   {c.change or '?'} {c.path}") for c in ctx.changes[:3]]
        context += [line(f"  decided  {d.text}") for d in ctx.decisions[-3:]]
        context += [line(f"  searched {q.query}") for q in ctx.searches[-3:]]
    messages = []
    for m in data.get("messages") or []:
        first = m.content.strip().splitlines()[0] if m.content.strip() else ""
        messages.append(line(Text.assemble((f"  {m.seq:>4} {m.role:<9}", "cyan"), first)))
    # The last messages matter most: context gives way first, then the oldest messages.
    room = max(height - len(out) - 2, 0)
    messages = messages[max(len(messages) - room, 0):]
    context = context[: room - len(messages)]
    if ctx is not None:
        out.append(line(f"context: {ctx.size.events} events, {len(ctx.files)} files", "bold"))
    out += context
    out.append(line(f"recent messages ({len(messages)} of {s.message_count}):", "bold"))
    out += messages
    return out[:height] + [line("")] * (height - len(out))
