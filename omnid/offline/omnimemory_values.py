"""How OmniMemory's loosely typed column values (times, ids, JSON blobs) become omnid's."""

# Times there are of three kinds, and which kind a column holds depends on the OmniMemory
# component that wrote it (mrtozner/omnimemory):
# - SQLite's ``CURRENT_TIMESTAMP`` (``YYYY-MM-DD HH:MM:SS``, UTC): everything the metrics
#   service (``omnimemory-metrics-service/src/data_store.py``) writes itself, i.e. all of
#   ``tool_sessions``, and ``created_at``/``last_accessed``/``last_activity`` where it
#   inserts or touches ``sessions``, ``projects`` and ``project_memories`` rows;
# - ``datetime.utcnow().isoformat()`` (``YYYY-MM-DDTHH:MM:SS.ffffff``, UTC, no zone): the
#   MCP server's project manager (``mcp_server/project_manager.py``) for ``projects`` and
#   ``project_memories`` ``created_at``/``last_accessed``;
# - ``datetime.now().isoformat()`` (a ``T``, local time, no zone): the MCP server's session
#   manager (``mcp_server/session_manager.py``) for ``sessions`` rows, every timestamp in
#   the context blob (both writers), and the metrics service's ``expires_at`` of memories.
# So a column is read as ``utc`` (any zone-less time is UTC: tool_sessions, projects,
# memories' created_at/last_accessed) or ``auto`` (zone-less with a ``T`` is local, with a
# space UTC: sessions, context items, expires_at). Zoned times and epoch numbers (seconds,
# or milliseconds when that large) are taken as they are.

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

import msgspec

from omnid_client.protocol import Record

SOURCE = "omnimemory"
_NAMESPACE = uuid.UUID("6f6d6e69-6d65-4d6f-9279-2d696d706f72")  # fixed: the same source id gives the same session id
_MEMORY_ID = re.compile(r"^mem_[0-9a-f]{12}$")
_TOOL_CHARS = re.compile(r"[^A-Za-z0-9._:@/+-]+")
_validate = msgspec.json.Decoder(Record)
_encode = msgspec.json.Encoder()


def parse_time(value: Any, naive: Literal["auto", "utc"] = "auto") -> float | None:
    """UTC epoch seconds from an OmniMemory time; ``naive`` says how the column's zone-less
    times were written (see the module notes). None for none; ValueError for no time."""
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
            seconds = _parse_iso(text, naive)
    if seconds > 1e11:  # milliseconds
        seconds /= 1000.0
    if not (0 <= seconds <= 1e11):
        raise ValueError(f"time out of range: {value!r}")
    return seconds


def _parse_iso(text: str, naive: str) -> float:
    normalized = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        dt = datetime.fromisoformat(normalized)
    except ValueError:
        raise ValueError(f"not a time: {text!r}") from None
    if dt.tzinfo is None:
        if naive == "auto" and ("T" in text or "t" in text):
            return dt.timestamp()  # Python's isoformat() of a local datetime.now()
        dt = dt.replace(tzinfo=timezone.utc)  # CURRENT_TIMESTAMP, or isoformat() of a utcnow()
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


def _resume_key(value: Any) -> str | None:
    """OmniMemory's instance id as a resume key (what its MCP server sends ``omnid compat``
    as ``instance_id``, used as the key there too), or None if it cannot be one."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


def _flag(value: Any) -> bool:
    """A BOOLEAN column as SQLite stores it (0/1; text if a writer bound a string)."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true")
    return isinstance(value, (int, float)) and value != 0


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


def _importance(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None
    return min(max(float(value), 0.0), 1.0)


def _first(*values: Any) -> Any:
    for v in values:
        if v not in (None, ""):
            return v
    return None


def _valid(record: Record) -> Record:
    """The record as the daemon will check it (pattern, length and range limits)."""
    return _validate.decode(_encode.encode(record))
