"""What every command shares: its client, the --json option, clean failures, and how
ages, dates and metadata are parsed (printing is in _text, which needs no click)."""

from __future__ import annotations

import functools
import sys
from datetime import datetime
from typing import Any, Callable, NoReturn

import click

from omnid_client import Client, OmnidError

from ._ids import Resolver
from ._text import (
    EXIT_NOT_RUNNING,
    ago,
    duration,
    print_fields,
    print_json,
    print_table,
    report_error,
    short,
    status_cell,
    when,
)

__all__ = [
    "EXIT_NOT_RUNNING", "ago", "duration", "print_fields", "print_json", "print_table", "short", "status_cell", "when",
]

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def fail_cleanly(fn: Callable) -> Callable:
    """Turn omnid errors (and stray OSErrors) into one line on stderr (or a JSON error) and an exit status:
    3 when the daemon cannot be reached, 1 for any other error. Shortened ids in the
    parameters (see _ids) are made whole first."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with Resolver() as ids:
                ids.params(kwargs)  # shortened ids become whole ones (a unique prefix of 6+ characters)
            return fn(*args, **kwargs)
        except (OmnidError, OSError) as e:
            exit_with_error(e, bool(kwargs.get("as_json")))

    return wrapper


def exit_with_error(e: OmnidError | OSError, as_json: bool) -> NoReturn:
    """One line on stderr (or a JSON error on stdout), then exit 3 if the daemon cannot be
    reached, else 1: a refusal (another uid, an unsafe socket directory) is not "not running".
    The click-free hot commands report through the same _text.report_error."""
    sys.exit(report_error(e, as_json))


def connect(autostart: bool = True) -> Client:
    return Client(autostart=autostart, client_name="omnid-cli")


def transfer_client(autostart: bool = True) -> Client:
    """A client for calls that move many records: a generous deadline per batch."""
    return Client(autostart=autostart, client_name="omnid-cli", timeout=120.0)


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
