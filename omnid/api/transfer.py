"""Maintenance methods that move data: import a batch of export records, run retention."""

from __future__ import annotations

import asyncio
import logging

from omnid_client.errors import Invalid, NotFound, RemoteError
from omnid_client.protocol import ImportRecords, ImportResult, RetentionResult, RunRetention

from ..identity import GONE, ProcessIdentity, is_alive, owner_process
from ..store import sessions as session_store
from ..store.transfer import Importer
from . import Caller, check_size, handles

log = logging.getLogger("omnid.transfer")


@handles("maintenance.import")
def import_records(caller: Caller, p: ImportRecords) -> ImportResult:
    """All records of the batch, or (on any error) none. Imported live sessions whose owner
    process is gone, or is not one the caller could bind a session to (another user's
    process, pid 1, a kernel thread, the daemon), are ended as reaped, with the reason in
    the result and the log; those whose owner runs are watched like any other."""
    if p.lines and len(p.lines) != len(p.records):
        raise Invalid(f"{len(p.lines)} line numbers for {len(p.records)} records", {"field": "lines"})
    daemon = caller.daemon
    store = daemon.store
    importer = Importer(store.db, now=store.now(), dry_run=p.dry_run, check_size=check_size)
    for i, record in enumerate(p.records):
        importer.add(record, f"line {p.lines[i]}" if p.lines else f"record {i + 1}")
    reaped, why = [], {}
    for s in importer.live_sessions:
        owner = ProcessIdentity(s.owner_pid, s.owner_start or 0, s.boot_id or "") if s.owner_pid is not None else None
        reason = _unbindable(caller, owner)
        if reason is None and not p.dry_run:
            try:
                daemon.reaper.track(s.session_id, owner)  # type: ignore[arg-type]
            except NotFound:
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
            daemon.expirer.expect(expires_at)
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
def run_retention(caller: Caller, p: RunRetention) -> RetentionResult | asyncio.Task:
    """A dry run answers at once; a real run writes its archive off the event loop, and
    answers when it is done."""
    return caller.daemon.archiver.request(
        older_than=p.older_than,
        archive=p.archive,
        purge=p.purge,
        dry_run=p.dry_run,
        limit=p.limit,
    )
