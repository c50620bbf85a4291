"""What every command shares: its client, the --json option, clean failures, and how
tables, fields, times and ages are printed and parsed."""

from __future__ import annotations

import functools
import json
import sys
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

import click
import msgspec

from omnid_client import Client, OmnidError, Unavailable

from ..safefile import os_message

EXIT_NOT_RUNNING = 3

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def fail_cleanly(fn: Callable) -> Callable:
    """Turn omnid errors into one line on stderr (or a JSON error) and an exit status:
    3 when the daemon cannot be reached, 1 for any other error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OmnidError, OSError) as e:
            # An OSError no command turned into its own error still gets one clean line.
            code = getattr(e, "code", type(e).__name__.lower()) if isinstance(e, OmnidError) else "io"
            message = str(e) if isinstance(e, OmnidError) or e.filename is None else f"{e.filename}: {os_message(e)}"
            if kwargs.get("as_json"):
                click.echo(json.dumps({"error": {"code": code, "message": message}}))
            else:
                click.echo(f"omnid: {code}: {message}", err=True)
            sys.exit(EXIT_NOT_RUNNING if isinstance(e, Unavailable) else 1)

    return wrapper


def connect(autostart: bool = True) -> Client:
    return Client(autostart=autostart, client_name="omnid-cli")


def transfer_client() -> Client:
    """A client for calls that move many records: a generous deadline per batch."""
    return Client(client_name="omnid-cli", timeout=120.0)


def print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [list(headers)] + rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_fields(fields: Sequence[tuple[str, Any]]) -> None:
    for name, value in fields:
        if value is not None:
            click.echo(f"{name + ':':13} {value}")


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


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


def parse_age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    unit = units.get(text[-1:], 0)
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        seconds = -1.0
    if not (0 <= seconds < float("inf")):
        raise click.BadParameter(f"{text!r} is not an age like 90s, 30m, 12h, 7d or 2w", param_hint="--older-than")
    return seconds


def parse_since(text: str | None) -> float | None:
    """An age (90s, 30m, 12h, 7d, 2w) before now, or an ISO date/time (local unless zoned)."""
    import re

    if text is None:
        return None
    if re.fullmatch(r"\d+(\.\d*)?[smhdw]?", text):
        return datetime.now().timestamp() - parse_age(text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an age like 7d nor a date like 2024-05-01", param_hint="--since"
        ) from None


def parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    return metadata


def project_options(fn: Callable) -> Callable:
    fn = click.option("--workspace", help="Any path inside the project. Default: the current directory.")(fn)
    return click.option("--project", "project_id", help="Project id (prj_…).")(fn)
