"""Maintenance methods: import a batch of export records, run retention, clean up orphan sessions."""

from __future__ import annotations

import logging

from omnid_client.errors import Invalid, NotFound
from omnid_client.protocol import (
    CleanupOrphans,
    CleanupResult,
    ImportRecords,
    ImportResult,
    RetentionResult,
    RunRetention,
)

from ..identity import ProcessIdentity, is_alive
from ..store import search as search_store
from ..store import sessions as session_store
from ..store import tasks as task_store
from ..store.importer import Importer
from ._common import check_size
from ._context import Caller, Context
from ._dispatch import handles

log = logging.getLogger("omnid.transfer")


@handles("maintenance.import")
def import_records(ctx: Context, caller: Caller, p: ImportRecords) -> ImportResult:
    """All records of the batch, or (on any error) none. Imported live sessions whose owner
    process is gone are ended as reaped; those whose owner runs are watched like any other."""
    if p.lines and len(p.lines) != len(p.records):
        raise Invalid(f"{len(p.lines)} line numbers for {len(p.records)} records", {"field": "lines"})
    store = ctx.store
    importer = Importer(store.db, now=store.now(), dry_run=p.dry_run, check_size=check_size)
    for i, record in enumerate(p.records):
        importer.add(record, f"line {p.lines[i]}" if p.lines else f"record {i + 1}")
    reaped = []
    for s in importer.live_sessions:
        owner = ProcessIdentity(s.owner_pid, s.owner_start or 0, s.boot_id or "") if s.owner_pid is not None else None
        alive = owner is not None and is_alive(owner)[0]
        if owner is not None and alive and not p.dry_run:
            try:
                ctx.reaper.track(s.session_id, owner)
            except NotFound:  # exited just now
                alive = False
        if not alive:
            if not p.dry_run:
                session_store.end(store.db, [s.session_id], "reaped", store.now())
            reaped.append(s.session_id)
    if not p.dry_run:
        for expires_at in importer.expiries:
            ctx.expirer.expect(expires_at)
        imported = {kind: c.imported for kind, c in importer.counts.items() if c.imported}
        if imported or reaped:
            log.info("import by pid %d: %s; %d live session(s) reaped", caller.pid, imported, len(reaped))
    return ImportResult(p.dry_run, importer.counts, reaped)


@handles("maintenance.retention")
def run_retention(ctx: Context, caller: Caller, p: RunRetention) -> RetentionResult:
    return ctx.archiver.run(
        trigger="manual",
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
