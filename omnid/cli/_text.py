"""How every command prints, without click: the hot commands share it with the rest."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from ._style import BOLD, ago, colour_on, iso, iso_times, paint, status_cell

__all__ = ["ago", "status_cell"]

EXIT_NOT_RUNNING = 3


def echo(message: str = "", err: bool = False) -> None:
    """A line on stdout (or stderr), flushed: what click.echo does with text."""
    stream = sys.stderr if err else sys.stdout
    stream.write(message + "\n")
    stream.flush()


def error_code(e: Exception) -> str:
    return getattr(e, "code", type(e).__name__.lower())


def report_error(e: Exception, as_json: bool) -> int:
    """One line on stderr (or a JSON error on stdout) for an omnid error, or an OSError no
    command turned into its own error; returns the exit status: 3 when the daemon cannot be
    reached, 1 for any other error."""
    from omnid_client import Unavailable

    code, message = error_code(e), str(e)
    if isinstance(e, OSError):
        code = "io"
        if e.filename is not None:
            from ..safefile import os_message

            message = f"{e.filename}: {os_message(e)}"
    if as_json:
        details = getattr(e, "details", None) or {}
        extra = {k: details[k] for k in ("field", "candidates") if k in details}
        echo(json.dumps({"error": {"code": code, "message": message, **extra}}))
    else:
        echo(f"omnid: {code}: {message}", err=True)
    return EXIT_NOT_RUNNING if isinstance(e, Unavailable) else 1


def print_json(value: Any) -> None:
    """``value`` as indented JSON, its epoch times as ISO 8601 with their zone."""
    import msgspec

    echo(msgspec.json.format(msgspec.json.encode(iso_times(value)), indent=2).decode())


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Aligned columns; on a terminal, bold headers and cells in their Paint colour."""
    cells = [["-" if v is None else v if isinstance(v, str) else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    colour = colour_on()
    if colour:
        echo(paint("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), BOLD))
    for row in ([] if colour else [list(headers)]) + cells:
        shown = [paint(v, getattr(v, "sgr", "")) if colour else v for v in row]
        pads = [" " * (w - len(v)) for v, w in zip(row[:-1], widths, strict=False)] + [""]
        echo("  ".join(text + pad for text, pad in zip(shown, pads, strict=True)).rstrip())


def print_fields(fields: Sequence[tuple[str, Any]], width: int = 13) -> None:
    for name, value in fields:
        if value is not None:
            echo(f"{name + ':':{width}} {value}")


def when(ts: float | None) -> str:
    """An absolute time, ISO 8601 with its zone (``show`` views; tables say ``ago``)."""
    return iso(ts) or "-"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
