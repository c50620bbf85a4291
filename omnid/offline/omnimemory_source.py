"""Reading an OmniMemory database without trusting it: a row at a time, only the columns
asked for, no value over its cap ever loaded, and a report of what was read and skipped."""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any, Iterable, Iterator

from omnid_client.protocol import MAX_METADATA_BYTES, MAX_VALUE_BYTES

CONTEXT_CAP = 8 << 20
"""Largest context blob read (a session's files, searches, decisions); a larger one is left out."""
DEFAULT_CAP = 4096
"""Largest id, name, time or path read; a larger value reads as missing."""
CAPS = {
    "context_json": CONTEXT_CAP, "context": CONTEXT_CAP,
    "memory_value": MAX_VALUE_BYTES, "value": MAX_VALUE_BYTES,  # a larger one cannot be stored anyway
    "metadata": MAX_METADATA_BYTES, "metadata_json": MAX_METADATA_BYTES, "metrics_json": MAX_METADATA_BYTES,
}
MAX_WARNINGS = 100
ROWID = "_rowid"
TOO_LARGE = "_too_large"
_INCREMENTAL = hasattr(sqlite3.Connection, "blobopen")


class Report:
    """What was read from each table, what it became, and what was skipped and why."""

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self.sessions: dict[str, Any] = {"found": 0, "converted": 0, "ended_on_import": 0, "skipped": Counter()}
        self.context: dict[str, Any] = {"items": 0, "converted": 0, "skipped": Counter()}
        self.memories: dict[str, Any] = {"rows": 0, "memories": 0, "versions": 0, "skipped": Counter()}
        self.warnings: list[str] = []
        self.more_warnings = 0

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self.more_warnings += 1

    def as_dict(self) -> dict[str, Any]:
        def plain(d: dict[str, Any]) -> dict[str, Any]:
            return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in d.items()}

        return {
            "tables": dict(self.tables),
            "sessions": plain(self.sessions),
            "context": plain(self.context),
            "memories": plain(self.memories),
            "warnings": self.warnings + ([f"and {self.more_warnings} more"] if self.more_warnings else []),
        }


class Source:
    """The tables of an OmniMemory database, read a row at a time (a cursor, never all
    rows) and only the columns asked for. A text or blob value is measured before it is
    read, through SQLite's incremental blob I/O, so one over its cap (``CAPS``) is never
    loaded: it reads as None, the row names it in ``TOO_LARGE`` and the report warns.
    Generated columns are never read (a virtual one is computed on every read)."""

    def __init__(self, db: sqlite3.Connection, report: Report):
        self.db = db
        self.report = report
        self.tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        encoding = db.execute("PRAGMA encoding").fetchone()[0]
        self.encoding = {"UTF-16le": "utf-16-le", "UTF-16be": "utf-16-be"}.get(encoding, "utf-8")
        self._columns: dict[str, set[str]] = {}
        self._rowid: dict[str, str | None] = {}

    def columns(self, table: str) -> set[str]:
        if table not in self._columns:
            found = set()
            for row in self.db.execute(f"PRAGMA table_xinfo({_quote(table)})"):
                name, hidden = row[1], row[6]
                if hidden:
                    self.report.warn(f"{table}.{name} is a generated or hidden column; not read")
                else:
                    found.add(name)
            self._columns[table] = found
        return self._columns[table]

    def rows(self, table: str, wanted: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Every row of ``table`` (none if there is no such table); the table's row count
        goes into the report."""
        if table not in self.tables:
            return
        n = 0
        for row in self._select(table, wanted, ""):
            n += 1
            yield row
        self.report.tables[table] = n

    def row(self, table: str, rowid: int, wanted: Iterable[str]) -> dict[str, Any]:
        return next(iter(self._select(table, wanted, rowid)), {})

    def _select(self, table: str, wanted: Iterable[str], rowid: int | str) -> Iterator[dict[str, Any]]:
        key = self._rowid_column(table)
        if key is None:
            return
        present = self.columns(table)
        cols = [c for c in dict.fromkeys(wanted) if c in present]
        parts = [key]
        for c in cols:
            q = _quote(c)
            if _INCREMENTAL:
                parts += [f"typeof({q})", f"CASE WHEN typeof({q}) IN ('text', 'blob') THEN NULL ELSE {q} END", "NULL"]
            else:  # no incremental I/O (Python 3.10): length() still reads a text value once
                parts += [f"typeof({q})", f"CASE WHEN length({q}) <= {_cap(c)} THEN {q} END", f"length({q})"]
        where, args = (f" WHERE {key} = ?", (rowid,)) if rowid != "" else ("", ())
        for raw in self.db.execute(f"SELECT {', '.join(parts)} FROM {_quote(table)}{where}", args):
            row: dict[str, Any] = {ROWID: raw[0]}
            for i, c in enumerate(cols):
                kind, value, size = raw[1 + 3 * i : 4 + 3 * i]
                if kind in ("text", "blob"):
                    value = self._value(table, c, raw[0], kind, value, size, row)
                row[c] = value
            yield row

    def _value(self, table: str, column: str, rowid: int, kind: str, value: Any, size: int | None, row: dict) -> Any:
        cap = _cap(column)
        if _INCREMENTAL:
            with self.db.blobopen(table, column, rowid, readonly=True) as blob:  # type: ignore[attr-defined,unused-ignore]  # 3.11+
                size = len(blob)
                value = blob.read() if size <= cap else None
            if value is not None and kind == "text":
                value = value.decode(self.encoding, "replace")
        if value is None:
            row.setdefault(TOO_LARGE, set()).add(column)
            self.report.warn(f"{table} row {rowid}: {column} is {size} bytes, over the {cap}-byte cap; left out")
        return value

    def _rowid_column(self, table: str) -> str | None:
        if table not in self._rowid:
            self._rowid[table] = None
            for name in ("rowid", "_rowid_", "oid"):
                if name in self.columns(table):
                    continue
                try:
                    self.db.execute(f"SELECT {name} FROM {_quote(table)} LIMIT 0")
                except sqlite3.OperationalError:
                    break  # WITHOUT ROWID: no OmniMemory table
                self._rowid[table] = name
                break
            if self._rowid[table] is None:
                self.report.warn(f"table {table} has no rowid (not as OmniMemory made it); not read")
        return self._rowid[table]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cap(column: str) -> int:
    return CAPS.get(column, DEFAULT_CAP)


def _merge(row: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """One row read in two parts."""
    merged = {**row, **more}
    if TOO_LARGE in row or TOO_LARGE in more:
        merged[TOO_LARGE] = row.get(TOO_LARGE, set()) | more.get(TOO_LARGE, set())
    return merged
