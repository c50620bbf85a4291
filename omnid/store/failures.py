"""How the store's failures are told apart and reported: the errors it raises at open, a
damaged file (and setting it aside), a full or read-only disk, and a failed write."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from omnid_client.errors import StorageError


class StoreError(Exception):
    """The database cannot be opened or migrated; the message says why and what to do."""


class CorruptDatabase(StoreError):
    """The database file is damaged (or not a database at all)."""


_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_corruption(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(e)
    return "malformed" in text or "not a database" in text


def set_aside(path: Path) -> list[Path]:
    """Rename a damaged database and its WAL and shared-memory files to
    ``NAME.corrupt-<UTC time>`` (keeping SQLite's ``-wal``/``-shm`` pairing), never
    deleting anything; returns the new paths. The WAL goes first: a WAL left beside a new
    database would be read into it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{target}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    moved = []
    for suffix in ("-wal", "-shm", ""):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.rename(source, f"{target}{suffix}")
            moved.append(Path(f"{target}{suffix}"))
    return moved[::-1]


def disk_hint(path: Path) -> str:
    """A note for an error message when the file system holding ``path`` is full or
    read-only (SQLite often says only "disk I/O error")."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return f" (the file system holding {path.parent} is read-only)"
    if st.f_bavail * st.f_frsize < 1 << 20:
        return f" (the file system holding {path.parent} is full)"
    return ""


def storage_error(e: sqlite3.Error) -> StorageError:
    name = getattr(e, "sqlite_errorname", type(e).__name__)
    return StorageError(f"database write failed: {e}", {"sqlite_error": name})
