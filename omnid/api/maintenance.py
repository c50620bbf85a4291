"""Maintenance methods: import a batch of export records, run retention, clean up orphan sessions."""

from __future__ import annotations

import asyncio
import logging

from omnid_client.errors import Invalid, NotFound, RemoteError
from omnid_client.protocol import (
    CleanupOrphans,
    CleanupResult,
    ImportRecords,
    ImportResult,
    RetentionResult,
    RunRetention,
)

from ..identity import GONE, ProcessIdentity, is_alive, owner_process
from ..store import search as search_store, sessions as session_store, tasks as task_store
from ..store.importer import Importer
from ._common import check_size
from ._context import Caller, Context
from ._dispatch import handles

log = logging.getLogger("omnid.transfer")


@handles("maintenance.import")
def import_records(ctx: Context, caller: Caller, p: ImportRecords) -> ImportResult:
    """All records of the batch, or (on any error) none. Imported live sessions whose owner
    process is gone, or is not one the caller could bind a session to (another user's
    process, pid 1, a kernel thread, the daemon), are ended as reaped, with the reason in
    the result and the log; those whose owner runs are watched like any other."""
    if p.lines and len(p.lines) != len(p.records):
        raise Invalid(f"{len(p.lines)} line numbers for {len(p.records)} records", {"field": "lines"})
    store = ctx.store
    importer = Importer(store.db, now=store.now(), dry_run=p.dry_run, check_size=check_size)
    for i, record in enumerate(p.records):
        importer.add(record, f"line {p.lines[i]}" if p.lines else f"record {i + 1}")
    reaped: list[str] = []
    why: dict[str, str] = {}
    for s in importer.live_sessions:
        owner = ProcessIdentity(s.owner_pid, s.owner_start or 0, s.boot_id or "") if s.owner_pid is not None else None
        reason = _unbindable(caller, owner)
        if owner is not None and reason is None and not p.dry_run:
            try:
                ctx.reaper.track(s.session_id, owner)
            except NotFound:  # exited just now
                reason = "process exited"
        if reason is not None:
            if not p.dry_run:
                session_store.end(store.db, [s.session_id], "reaped", store.now())
                if reason not in GONE:
                    log.warning("import by pid %d: ended live session %s: %s", caller.pid, s.session_id, reason)
            reaped.append(s.session_id)
            why[s.session_id] = reason
    if not p.dry_run:
        for expires_at in importer.expiries:
            ctx.expirer.expect(expires_at)
        imported = {kind: c.imported for kind, c in importer.counts.items() if c.imported}
        if imported or reaped:
            log.info("import by pid %d: %s; %d live session(s) reaped", caller.pid, imported, len(reaped))
    return ImportResult(p.dry_run, importer.counts, reaped, why)


def _unbindable(caller: Caller, owner: ProcessIdentity | None) -> str | None:
    """Why an imported live session may not stay bound to ``owner``; None if it may."""
    if owner is None:
        return "no owner process"
    alive, cause = is_alive(owner)
    if not alive:
        return cause
    try:
        owner_process(owner.pid, caller.uid)
    except NotFound:
        return "process exited"
    except RemoteError as e:  # another user's process, pid 1, a kernel thread, the daemon
        return str(e)
    return None


@handles("maintenance.retention")
def run_retention(ctx: Context, caller: Caller, p: RunRetention) -> RetentionResult | asyncio.Task[RetentionResult]:
    """A dry run answers at once; a real run writes its archive off the event loop, and
    answers when it is done."""
    return ctx.archiver.request(
        older_than=p.older_than,
        archive=p.archive,
        purge=p.purge,
        dry_run=p.dry_run,
        limit=p.limit,
    )


@handles("maintenance.cleanup_orphans")
def cleanup_orphans(ctx: Context, caller: Caller, p: CleanupOrphans) -> CleanupResult:
    """Delete ended sessions older than ``older_than`` seconds that hold nothing at all."""
    store = ctx.store
    orphans = task_store.orphan_sessions(store.db, store.now() - p.older_than)
    if not p.dry_run and orphans:
        search_store.unindex_sessions(store.db, orphans)
        task_store.delete_sessions(store.db, orphans)
    return CleanupResult(p.dry_run, orphans)
