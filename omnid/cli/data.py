"""Commands that move or delete data in bulk: backup, export, import, retention, clean-up."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from omnid_client.paths import daemon_paths

from ._output import (
    connect,
    duration,
    fail_cleanly,
    json_option,
    parse_age,
    parse_since,
    print_fields,
    print_json,
    print_table,
    transfer_client,
    when,
)
from ._progress import EXIT_INTERRUPTED, Progress, StopOnInterrupt

quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar (there is one only when stderr is a terminal)."
)
RERUN = "rerun to continue (records already there are skipped)"


def interrupted(message: str, as_json: bool, **details: Any) -> NoReturn:
    """Say what a Ctrl-C left written (or that nothing was), then exit 130 as a shell expects."""
    if as_json:
        click.echo(json.dumps({"error": {"code": "interrupted", "message": message, **details}}))
    else:
        click.echo(f"omnid: {message}", err=True)
    sys.exit(EXIT_INTERRUPTED)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@quiet_option
@json_option
@fail_cleanly
def backup(path: Path, force: bool, quiet: bool, as_json: bool) -> None:
    """Copy the database to PATH, consistently, while omnid runs (or not).

    Uses SQLite's online backup from a read-only connection, checks the copy's integrity,
    and only then puts it at PATH. An existing PATH is refused unless --force."""
    from ..offline import transfer

    with Progress("backing up", unit="pages", enabled=not (quiet or as_json)) as bar:

        def copied(done: int, total: int) -> None:
            bar.update(done, total)
            if done == total:
                bar.draw(force=True)
                bar.phase("checking the copy's integrity", unit="")

        try:
            info = transfer.backup(daemon_paths().database, path, force=force, progress=copied)
        except KeyboardInterrupt:
            bar.close()
            interrupted("interrupted: nothing written", as_json)
    if as_json:
        print_json(info)
    else:
        click.echo(f"backed up {info['sessions']} session(s), {info['memories']} memories to {info['path']} "
                   f"({info['bytes']} bytes, schema v{info['schema_version']}, integrity ok)")


@click.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--session", "session_ids", multiple=True, help="Only this session (repeatable).")
@click.option("--project", "project_ids", multiple=True, help="Only this project's sessions and memories (repeatable).")
@click.option("--since", help="Only sessions active, and memories updated, since: an age (7d) or a date.")
@quiet_option
@json_option
@fail_cleanly
def export_command(
    output: Path | None, force: bool, session_ids: tuple[str, ...], project_ids: tuple[str, ...], since: str | None,
    quiet: bool, as_json: bool,
) -> None:
    """Export sessions (with their context, messages, memories, tasks), projects and project
    memories as JSONL, one record per line, in a stable order (see `omnid import`)."""
    from ..offline import transfer
    from ..safefile import atomic_write, os_message

    if as_json and output is None:
        raise click.UsageError("--json prints a summary, so the export needs --output")
    filters: dict[str, Any] = {
        "session_ids": list(session_ids) or None,
        "project_ids": list(project_ids) or None,
        "since": parse_since(since),
    }
    database = daemon_paths().database
    bar = Progress("exporting", enabled=not (quiet or as_json))
    filters["progress"] = bar.update
    try:
        if output is None:
            counts = transfer.export(database, sys.stdout.buffer, **filters)
            sys.stdout.buffer.flush()
        else:
            output = output.absolute()
            try:
                # The export holds every message: readable by its owner alone, like the database.
                with atomic_write(output, overwrite=force) as pending:
                    counts = transfer.export(database, pending.file, **filters)
            except FileExistsError:
                raise transfer.TransferError(f"{output} exists; pass --force to overwrite it", "exists") from None
            except OSError as e:
                raise transfer.TransferError(f"cannot write {output}: {os_message(e)}", "io") from None
    except KeyboardInterrupt:
        bar.close()
        interrupted("interrupted: nothing written" if output else "interrupted: the export on stdout is incomplete",
                    as_json)
    finally:
        bar.close()
    if as_json:
        print_json({"path": str(output), "records": counts})
    else:
        summary = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing"
        click.echo(f"exported {summary}" + (f" to {output}" if output else ""), err=True)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check the file and report what would be imported; write nothing.")
@quiet_option
@json_option
@fail_cleanly
def import_command(file: Path, dry_run: bool, quiet: bool, as_json: bool) -> None:
    """Import a JSONL export through the daemon, keeping ids. Every line is checked before
    anything is written; records already present are left alone, so importing the same
    file again adds nothing. The daemon commits batches of up to 5000 records, each whole
    or not at all: a Ctrl-C stops between batches and says how many were committed."""
    from ..offline import transfer

    with Progress(f"checking {file.name}", unit="bytes", enabled=not (quiet or as_json)) as bar:
        with StopOnInterrupt() as stop:
            try:
                bar.total = size_of(file)
                total = sum(transfer.check_file(file, bar.update, stop).values())
                bar.phase("importing", total, "records")
                with transfer_client(autostart=not dry_run) as client:
                    records = transfer.read_records(file)
                    result = transfer.send(client, records, dry_run=dry_run, progress=bar.update, stop=stop)
            except (transfer.Interrupted, KeyboardInterrupt) as e:
                bar.close()
                stopped(e, bar.unit == "records", bar.done, dry_run, as_json)
    print_json(result) if as_json else print_import(result)


def size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # reading it says what is wrong


def stopped(e: BaseException, sending: bool, sent: int, dry_run: bool, as_json: bool) -> NoReturn:
    """What an import interrupted by Ctrl-C wrote: nothing while checking, whole batches up
    to ``sent`` records while sending, and after a second Ctrl-C perhaps the batch the
    daemon was committing."""
    from ..offline.transfer import Interrupted

    if isinstance(e, Interrupted):
        sent = e.committed
    if dry_run or not sending or sent == 0 and not isinstance(e, KeyboardInterrupt):
        interrupted("interrupted: nothing written", as_json, committed=0)
    if isinstance(e, KeyboardInterrupt):
        interrupted(
            f"interrupted during a batch: {sent} record(s) were committed before it, and the batch may have been "
            f"too; {RERUN}", as_json, committed=sent,
        )
    interrupted(f"interrupted after {sent} record(s) were committed; {RERUN}", as_json, committed=sent)


@click.command("import-omnimemory")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Read and convert, report what would be imported; write nothing.")
@quiet_option
@json_option
@fail_cleanly
def import_omnimemory(path: Path, dry_run: bool, quiet: bool, as_json: bool) -> None:
    """Import sessions (with their context and counters) and project memories from an
    OmniMemory dashboard.db, read-only. A session OmniMemory never ended comes in live and
    watched if its owner process still runs and is yours, else ended (reaped) at its last
    activity; expired memories are skipped."""
    from ..offline import omnimemory, transfer
    from ..offline.omnimemory_owners import settle_live

    records, report = omnimemory.read(path)
    with Progress("importing", enabled=not (quiet or as_json)) as bar, StopOnInterrupt() as stop:
        try:
            with transfer_client(autostart=not dry_run) as client:
                numbered = enumerate(settle_live(records, report, client), 1)
                result = transfer.send(client, numbered, dry_run=dry_run, progress=bar.update, stop=stop)
        except (transfer.Interrupted, KeyboardInterrupt) as e:
            bar.close()
            stopped(e, True, bar.done, dry_run, as_json)
    source = report.as_dict()
    for warning in source["warnings"]:
        click.echo(f"omnid: warning: {warning}", err=True)
    if as_json:
        print_json({"source": source, "import": result})
        return
    click.echo("read: " + (", ".join(f"{n} {table} row(s)" for table, n in source["tables"].items()) or "no tables"))
    for what in ("sessions", "context", "memories"):
        entry = dict(source[what])
        skipped = entry.pop("skipped")
        line = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in entry.items())
        if skipped:
            line += "; skipped " + ", ".join(f"{n} {reason}" for reason, n in skipped.items())
        click.echo(f"{what}: {line}")
    print_import(result)


def print_import(result: Any, source: dict | None = None) -> None:
    from ..identity import GONE

    verb = "would import" if result.dry_run else "imported"
    rows = []
    for kind, c in result.records.items():
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(c.skipped.items())) or "-"
        rows.append((kind, c.imported, c.existing, skipped))
    if rows:
        print_table(["RECORD", verb.upper(), "ALREADY THERE", "SKIPPED"], rows)
    else:
        click.echo("no records")
    if result.reaped:
        ended = "would be" if result.dry_run else "were"
        click.echo(f"{len(result.reaped)} live session(s) whose owner process is gone {ended} ended as reaped")
        for session_id, why in result.why.items():
            if why not in GONE:
                click.echo(f"  {session_id}: {why}")


@click.group()
def retention() -> None:
    """Archive and delete ended sessions older than an age (the config's retention for the daemon)."""


@retention.command("run")
@click.option(
    "--older-than", help="Sessions that ended this long ago: 90s, 30m, 12h, 7d, 2w. Default: the daemon's retention."
)
@click.option("--archive", type=click.Path(dir_okay=False, path_type=Path),
              help="Append the sessions to this JSONL file before deleting them "
              "(default: archive.jsonl in omnid's state dir).")
@click.option("--purge", is_flag=True, help="Delete without archiving.")
@click.option("--dry-run", is_flag=True, help="Only show which sessions would go.")
@quiet_option
@json_option
@fail_cleanly
def retention_run(
    older_than: str | None, archive: Path | None, purge: bool, dry_run: bool, quiet: bool, as_json: bool
) -> None:
    """Archive (or purge) and delete ended sessions that ended longer ago than the age, in
    runs of 500 the daemon commits whole: a Ctrl-C stops between runs and says how many went."""
    if archive is not None and purge:
        raise click.UsageError("--archive and --purge exclude each other")
    seconds = parse_age(older_than) if older_than is not None else None
    target = str(archive.absolute()) if archive is not None else None
    session_ids: list[str] = []
    done = "purged" if purge else "archived and deleted"
    with Progress("purging" if purge else "archiving", unit="sessions", enabled=not (quiet or as_json)) as bar, \
            StopOnInterrupt() as stop, transfer_client(autostart=not dry_run) as client:
        between = False
        try:
            while True:
                if stop():
                    between = True
                    raise KeyboardInterrupt
                result = client.run_retention(older_than=seconds, archive=target, purge=purge, dry_run=dry_run)
                session_ids += result.session_ids
                bar.update(len(session_ids), len(session_ids) + result.remaining)
                if dry_run or not result.remaining or not result.session_ids:
                    break
        except KeyboardInterrupt:
            bar.close()
            n = len(session_ids)
            if not between and not dry_run:  # a second Ctrl-C, with a run under way
                interrupted(f"interrupted during a run: {n} session(s) were {done} before it, and the run may have "
                            "been too; rerun to continue", as_json, deleted=n)
            if dry_run or not n:
                interrupted("interrupted: nothing written", as_json, deleted=0)
            interrupted(f"interrupted after {n} session(s) were {done}; rerun to continue", as_json, deleted=n)
    if as_json:
        print_json({**msgspec.structs.asdict(result), "session_ids": session_ids})
        return
    verb = ("would archive" if dry_run else "archived") if result.archive else ("would purge" if dry_run else "purged")
    where = f" to {result.archive}" if result.archive else ""
    more = f" (and {result.remaining} more)" if dry_run and result.remaining else ""
    click.echo(f"{verb} {len(session_ids)} session(s) that ended before {when(result.cutoff)}{where}{more}")
    for sid in session_ids:
        click.echo(sid)


@retention.command("status")
@json_option
@fail_cleanly
def retention_status(as_json: bool) -> None:
    """The daemon's retention age, archive file, and what its runs did."""
    with connect(autostart=False) as client:
        st = client.status().retention
    if as_json:
        print_json(st)
        return
    if st is None:
        click.echo("this daemon does not report retention")
        return
    last = st.last_run
    last_run = "never"
    if last:
        failed = f", {last.error}" if last.error else ""
        last_run = f"{when(last.at)} ({last.trigger}, {last.deleted} deleted{failed})"
    print_fields(
        [
            ("retention", duration(st.age) if st.age else "off (ended sessions are kept)"),
            ("archive", st.archive),
            ("runs", f"{st.runs} ({st.archived} archived, {st.purged} purged, {st.failures} failed)"),
            ("last run", last_run),
            ("next run", when(st.next_run) if st.next_run else None),
        ]
    )


@click.group()
def cleanup() -> None:
    """Explicit clean-ups; omnid deletes nothing on its own except expired memories (and,
    with a retention age configured, archived old sessions: see `omnid retention`)."""


@cleanup.command("orphans")
@click.option("--older-than", "older_than", default="7d", show_default=True, help="Age: 90s, 30m, 12h, 7d, 2w.")
@click.option("--dry-run", is_flag=True)
@json_option
@fail_cleanly
def cleanup_orphans(older_than: str, dry_run: bool, as_json: bool) -> None:
    """Delete ended sessions older than --older-than that hold no tasks, messages, context or memories."""
    seconds = parse_age(older_than)
    with connect(autostart=not dry_run) as client:
        result = client.cleanup_orphans(seconds, dry_run=dry_run)
    if as_json:
        print_json(result)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(result.session_ids)} orphan session(s)")
    for sid in result.session_ids:
        click.echo(sid)
