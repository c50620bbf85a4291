"""How output looks to a person: colour on a terminal (never with NO_COLOR or --no-color),
times relative to now in tables, and absolute ISO 8601 times with their zone elsewhere."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from typing import IO, Any

import msgspec

GREEN, YELLOW, DIM, BOLD = "32", "33", "2", "1"
STATUS = {"live": GREEN, "reaped": YELLOW, "expired": YELLOW, "ended": DIM}
"""The status column's colours."""

no_color = False
"""Set by the global ``--no-color`` option."""


def colour_on(stream: IO[str] | None = None) -> bool:
    """Colour for ``stream`` (stdout): off with --no-color or a non-empty NO_COLOR, on with a
    non-empty FORCE_COLOR, else only on a terminal (see no-color.org)."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


class Paint(str):
    """Cell text with the SGR code to show it in (applied by print_table when colour is on)."""

    sgr: str

    def __new__(cls, text: str, sgr: str | None) -> Paint:
        self = super().__new__(cls, text)
        self.sgr = sgr or ""
        return self


def paint(text: str, sgr: str) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if sgr else text


def status_cell(value: str) -> Paint:
    return Paint(value, STATUS.get(value))


def iso(ts: float | None, timespec: str = "seconds") -> str | None:
    """``ts`` (epoch seconds) as ISO 8601 in the local zone, with its offset."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec=timespec)


_UNITS = ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"), (3600, "h"),
          (60, "min"), (1, "s"))


def ago(ts: float | None, now: float | None = None) -> str:
    """``ts`` relative to ``now``: "just now", "3 min ago", "2 days ago", "in 5 h"."""
    if ts is None:
        return "-"
    delta = (time.time() if now is None else now) - ts
    if abs(delta) < 5:
        return "just now"
    seconds = abs(delta)
    for size, unit in _UNITS:
        if seconds >= size:
            n = int(seconds // size)
            text = f"{n} {unit}" + ("s" if n > 1 and unit not in ("h", "min", "s") else "")
            return f"{text} ago" if delta > 0 else f"in {text}"
    return "just now"  # pragma: no cover - the loop's last unit is one second


TIME_KEYS = frozenset({"at", "last_activity", "since", "until", "cutoff", "next_run", "last_accessed", "last_access",
                       "first_access", "owner_since"})
"""JSON keys (beside any ending in ``_at``) that hold an epoch time."""


def iso_times(value: Any, top: bool = True) -> Any:
    """``value`` (a result struct, or a dict of them the command built) with every epoch time
    as ISO 8601 with its zone, to the microsecond (no precision lost), ready to encode.
    Times are the fields of structs (and keys of the top-level dict) named as times; the
    dicts a user stored (metadata, memory values, checkpoint snapshots) are left as they are."""
    if isinstance(value, msgspec.Struct):
        return _struct(value)
    if isinstance(value, dict):
        return {k: iso(v, "microseconds") if top and _is_time(k, v) else iso_times(v, False) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [iso_times(v, False) for v in value]
    return value


def _struct(value: msgspec.Struct) -> dict[str, Any]:
    """A struct as msgspec encodes it (tag, encode names, defaults omitted if it omits them)."""
    config = value.__struct_config__
    out: dict[str, Any] = {} if config.tag_field is None else {config.tag_field: config.tag}
    for f in msgspec.structs.fields(value):
        v = getattr(value, f.name)
        if v is msgspec.UNSET or config.omit_defaults and _is_default(f, v):
            continue
        out[f.encode_name] = iso(v, "microseconds") if _is_time(f.name, v) else iso_times(v, False)
    return out


def _is_default(f: msgspec.structs.FieldInfo, v: Any) -> bool:
    if f.default is not msgspec.NODEFAULT:
        return bool(v == f.default)
    return f.default_factory is not msgspec.NODEFAULT and bool(v == f.default_factory())


def is_time_key(key: object) -> bool:
    """Whether a field or key of this name holds an epoch time (``--json`` prints it as ISO 8601)."""
    return isinstance(key, str) and (key.endswith("_at") or key in TIME_KEYS)


def _is_time(key: object, value: object) -> bool:
    return is_time_key(key) and isinstance(value, (int, float)) and not isinstance(value, bool)
