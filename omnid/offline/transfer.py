"""Backups, exports and imports of the database, run in the ``omnid`` command's process."""

# Backup and export read the database file through their own read-only connection: in WAL
# mode a reader sees one consistent snapshot and never blocks the daemon, which stays the
# only writer. Imports go through the daemon, in batches that each fit one frame.

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import quote

import msgspec

from omnid_client.errors import OmnidError, RemoteError
from omnid_client.protocol import (
    MAX_FRAME,
    ContextFoldRecord,
    ContextRecord,
    ExportHeader,
    ImportCounts,
    ImportResult,
    InteractionRecord,
    MessageRecord,
    Record,
)
from omnid_client.protocol.explain import explain

from ..safefile import atomic_write, check_existing, os_message
from ..store.migrations import LATEST
from ..store.records import export_records, jsonl, record_kind

BATCH_BYTES = MAX_FRAME - 64 * 1024
"""Encoded records per import request, leaving room for the frame's envelope."""
BATCH_RECORDS = 5000
BACKUP_STEP = 1024
"""Pages copied per backup step (4 MiB of 4 KiB pages), between progress reports."""
EVERY = 256
"""Lines or records between progress reports and checks for a requested stop."""
Stop = Callable[[], bool]


class TransferError(OmnidError):
    """A backup, export or import cannot be done; ``code`` says what kind of problem."""

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code


class Interrupted(TransferError):
    """An import stopped on request between batches: ``committed`` records (whole batches)
    were written, nothing after them."""

    def __init__(self, committed: int):
        super().__init__("interrupted", "interrupted")
        self.committed = committed


# --- the database file -------------------------------------------------------------------


def open_readonly(path: Path, *, check_schema: bool = True) -> sqlite3.Connection:
    """A read-only connection to omnid's database (never creates or changes it)."""
    try:
        check_existing(Path(f"{path}-wal"))  # SQLite would read through a link planted there too
        present = check_existing(path)
    except OSError as e:
        raise TransferError(os_message(e), "invalid") from None
    if not present:
        raise TransferError(f"no database at {path} (has omnid ever run with this OMNID_HOME?)", "not_found")
    db = sqlite3.connect(f"file:{quote(os.fspath(path.absolute()))}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        db.close()
        raise TransferError(f"{path} is not a readable SQLite database: {e}", "invalid") from None
    if check_schema and version != LATEST:
        db.close()
        if version > LATEST:
            raise TransferError(
                f"{path} has schema v{version}, newer than this omnid (v{LATEST}); upgrade omnid", "version"
            )
        raise TransferError(
            f"{path} has schema v{version}; start the daemon once (omnid serve) so it migrates to v{LATEST}", "version"
        )
    return db


def backup(
    database: Path, dest: Path, *, force: bool = False, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Copy the live database to ``dest`` with SQLite's online backup, check the copy, and
    only then put it in place. Refuses an existing ``dest`` unless ``force``, and anything
    at ``dest`` that is not a regular file. ``progress(pages copied, pages)`` after each step."""
    dest = dest.absolute()
    if any(_same_file(dest, Path(f"{database}{suffix}")) for suffix in ("", "-wal", "-shm")):
        raise TransferError(f"{dest} is one of the database's own files", "invalid")
    src = open_readonly(database, check_schema=False)
    try:
        with atomic_write(dest, overwrite=force) as pending:
            target = sqlite3.connect(pending.path, isolation_level=None)
            try:
                # One read transaction around every step: the whole copy reads a single WAL
                # snapshot, so it is consistent and never restarts however much the daemon writes.
                src.execute("BEGIN")
                src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                src.backup(target, pages=BACKUP_STEP, progress=_pages(progress))
                src.execute("COMMIT")
                target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                check = [r[0] for r in target.execute("PRAGMA integrity_check")]
                if check != ["ok"]:
                    raise TransferError(f"the backup failed its integrity check: {'; '.join(check[:5])}", "corrupt")
                info = {
                    "path": str(dest),
                    "schema_version": target.execute("PRAGMA user_version").fetchone()[0],
                    "pages": target.execute("PRAGMA page_count").fetchone()[0],
                    "sessions": _count(target, "sessions"),
                    "memories": _count(target, "memories"),
                    "integrity": "ok",
                }
            finally:
                target.close()
        info["bytes"] = os.stat(dest).st_size
        return info
    except FileExistsError:
        raise TransferError(f"{dest} exists; pass --force to overwrite it", "exists") from None
    except sqlite3.Error as e:
        raise TransferError(f"backup failed: {e}", "io") from None
    except OSError as e:
        raise TransferError(f"cannot write {dest}: {os_message(e)}", "io") from None
    finally:
        src.close()


def _pages(progress: Callable[[int, int], None] | None) -> Callable[[int, int, int], None] | None:
    if progress is None:
        return None
    return lambda status, remaining, total: progress(total - remaining, total)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _count(db: sqlite3.Connection, table: str) -> int:
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


# --- export ------------------------------------------------------------------------------


def export(
    database: Path,
    out: IO[bytes],
    *,
    session_ids: Sequence[str] | None = None,
    project_ids: Sequence[str] | None = None,
    since: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write the JSONL export to ``out`` (streamed, one consistent snapshot); returns the
    number of records by type. ``progress(records written)`` every few hundred records."""
    db = open_readonly(database)
    counts: dict[str, int] = {}
    try:
        db.execute("BEGIN")  # one read transaction: every record from the same snapshot
        buf = bytearray()
        for n, record in enumerate(export_records(
            db, now=time.time(), session_ids=session_ids, project_ids=project_ids, since=since
        ), 1):
            if progress is not None and n % EVERY == 0:
                progress(n)
            kind = record_kind(record)
            counts[kind] = counts.get(kind, 0) + 1
            buf += jsonl(record)
            if len(buf) >= 1 << 16:
                out.write(buf)
                buf.clear()
        out.write(buf)
        db.execute("COMMIT")
    except sqlite3.Error as e:
        raise TransferError(f"reading {database} failed: {e}", "io") from None
    finally:
        db.close()
    counts.pop("omnid-export", None)
    return counts


# --- import ------------------------------------------------------------------------------

_record_decoder = msgspec.json.Decoder(Record)
_msgpack = msgspec.msgpack.Encoder()


def read_records(
    path: Path, progress: Callable[[int], None] | None = None, stop: Stop | None = None
) -> Iterator[tuple[int, Record]]:
    """(line number, record) for every non-blank line; a TransferError names the first
    line that is not a valid record. ``progress(bytes read)`` every few hundred lines;
    Interrupted(0) there once ``stop()`` is true."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TransferError(f"cannot read {path}: {e}", "io") from None
    with f:
        done = 0
        for number, line in enumerate(f, 1):
            done += len(line)
            if number % EVERY == 0:
                if stop is not None and stop():
                    raise Interrupted(0)
                if progress is not None:
                    progress(done)
            if not line.strip():
                continue
            try:
                yield number, _record_decoder.decode(line)
            except msgspec.ValidationError as e:
                raise TransferError(f"{path} line {number}: {explain(e, Record, _tag(line))[0]}") from None
            except msgspec.DecodeError as e:
                raise TransferError(f"{path} line {number}: not a JSON record: {e}") from None


def _tag(line: bytes) -> object:
    try:
        return msgspec.json.decode(line).get("type")
    except (msgspec.DecodeError, AttributeError):
        return None


def check_file(
    path: Path, progress: Callable[[int], None] | None = None, stop: Stop | None = None
) -> dict[str, int]:
    """Read every line first, so a bad line stops the import before anything is written.
    Also checks that content records count up from 1 (or start over at 1) per parent."""
    counts: dict[str, int] = {}
    last: dict[tuple[str, str], int] = {}
    for number, record in read_records(path, progress, stop):
        kind = record_kind(record)
        counts[kind] = counts.get(kind, 0) + 1
        if isinstance(record, ContextFoldRecord):  # folded events come before the session's context records
            key = ("context", record.session_id)
            last[key] = last.get(key, 0) + record.events
        elif isinstance(record, (ContextRecord, MessageRecord, InteractionRecord)):
            parent = record.task_id if isinstance(record, InteractionRecord) else record.session_id
            key = (kind, parent)
            expected = last.get(key, 0) + 1
            if record.seq not in (expected, 1):
                raise TransferError(f"{path} line {number}: {kind} seq {record.seq} of {parent} should be {expected}")
            last[key] = record.seq
    counts.pop("omnid-export", None)
    return counts


def batches(records: Iterable[tuple[int, Record]]) -> Iterator[tuple[list[int], list[Record]]]:
    """Group records into import requests that each fit one frame."""
    lines: list[int] = []
    batch: list[Record] = []
    size = 0
    for number, record in records:
        n = len(_msgpack.encode(record)) + 9  # and its line number
        if n > BATCH_BYTES:
            raise TransferError(
                f"line {number}: the record is {n} bytes encoded, more than one request carries ({BATCH_BYTES})",
                "too_large",
            )
        if batch and (size + n > BATCH_BYTES or len(batch) >= BATCH_RECORDS):
            yield lines, batch
            lines, batch, size = [], [], 0
        lines.append(number)
        batch.append(record)
        size += n
    if batch:
        yield lines, batch


def send(
    client: Any, records: Iterable[tuple[int, Record]], *, dry_run: bool = False,
    progress: Callable[[int], None] | None = None, stop: Stop | None = None,
) -> ImportResult:
    """Import records batch by batch through ``client``; the results added up. A failing
    batch writes nothing; the batches before it stay imported (importing again skips them).
    ``progress(records sent)`` after each batch; Interrupted before the next once ``stop()``."""
    total = ImportResult(dry_run, {}, [])
    sent = 0
    for lines, batch in batches(records):
        if stop is not None and stop():
            raise Interrupted(0 if dry_run else sent)
        try:
            result = client.import_records(batch, lines=lines, dry_run=dry_run)
        except RemoteError as e:
            note = f" (nothing from line {lines[0]} on was imported)" if not dry_run else ""
            raise TransferError(f"{e}{note}", e.code) from None
        merge(total, result)
        sent += sum(not isinstance(r, ExportHeader) for r in batch)
        if progress is not None:
            progress(sent)
    return total


def merge(total: ImportResult, result: ImportResult) -> None:
    for kind, counts in result.records.items():
        into = total.records.setdefault(kind, ImportCounts(skipped={}))
        into.imported += counts.imported
        into.existing += counts.existing
        for reason, n in counts.skipped.items():
            into.skipped[reason] = into.skipped.get(reason, 0) + n
    total.reaped.extend(result.reaped)
    total.why.update(result.why)


def import_file(client: Any, path: Path, *, dry_run: bool = False) -> ImportResult:
    check_file(path)
    return send(client, read_records(path), dry_run=dry_run)
