"""How OmniMemory's loosely typed column values (times, ids, JSON blobs) become omnid's."""

# Times there are of two kinds: SQLite's ``CURRENT_TIMESTAMP`` (``YYYY-MM-DD HH:MM:SS``, UTC)
# and Python's ``datetime.now().isoformat()`` (``YYYY-MM-DDTHH:MM:SS.ffffff``, local time, as
# in memories' ``expires_at``). So a time without a zone is read as UTC when written with a
# space and as local time when written with a ``T``; zoned times and epoch numbers (seconds,
# or milliseconds when that large) are taken as they are.

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any

import msgspec

from omnid_client.protocol import Record

SOURCE = "omnimemory"
_NAMESPACE = uuid.UUID("6f6d6e69-6d65-4d6f-9279-2d696d706f72")  # fixed: the same source id gives the same session id
_MEMORY_ID = re.compile(r"^mem_[0-9a-f]{12}$")
_TOOL_CHARS = re.compile(r"[^A-Za-z0-9._:@/+-]+")
_validate = msgspec.json.Decoder(Record)
_encode = msgspec.json.Encoder()


def parse_time(value: Any) -> float | None:
    """UTC epoch seconds from an OmniMemory time (see the module notes); None for none.
    ValueError for something that is no time."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_iso(text)
    if seconds > 1e11:  # milliseconds
        seconds /= 1000.0
    if not (0 <= seconds <= 1e11):
        raise ValueError(f"time out of range: {value!r}")
    return seconds


def _parse_iso(text: str) -> float:
    normalized = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        dt = datetime.fromisoformat(normalized)
    except ValueError:
        raise ValueError(f"not a time: {text!r}") from None
    if dt.tzinfo is None:
        if "T" in text or "t" in text:
            return dt.timestamp()  # Python's isoformat() of a local datetime.now()
        dt = dt.replace(tzinfo=timezone.utc)  # SQLite's CURRENT_TIMESTAMP
    return dt.timestamp()

def _session_id(source_id: str) -> str:
    try:
        return str(uuid.UUID(source_id))
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE, f"session:{source_id}"))


def _memory_id(source_id: Any, fallback: str) -> str:
    text = str(source_id) if source_id not in (None, "") else fallback
    if _MEMORY_ID.match(text):
        return text
    return "mem_" + hashlib.sha256(f"{SOURCE}:memory:{text}".encode()).hexdigest()[:12]


def _tool_id(value: Any) -> str:
    text = _TOOL_CHARS.sub("-", str(value or "").strip())
    text = text.lstrip("._:@/+-")[:128]
    return text or SOURCE


def _json_dict(text: Any) -> dict[str, Any] | None:
    if text in (None, ""):
        return {}
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _first(*values: Any) -> Any:
    for v in values:
        if v not in (None, ""):
            return v
    return None


def _valid(record: Record) -> Record:
    """The record as the daemon will check it (pattern, length and range limits)."""
    return _validate.decode(_encode.encode(record))
