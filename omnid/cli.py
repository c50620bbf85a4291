"""The ``omnid`` command: each command makes one client call and formats its answer,
as a table for people or as JSON (``--json``) for programs."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click
import msgspec

from omnid_client import Client, OmnidError, Unavailable
from omnid_client.paths import daemon_paths, read_status_file, socket_candidates
from omnid_client.protocol import DaemonStatus, ReapResult, Session

from . import __version__

EXIT_NOT_RUNNING = 3

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def fail_cleanly(fn: Callable) -> Callable:
    """Turn omnid errors into one line on stderr (or a JSON error) and an exit status:
    3 when the daemon cannot be reached, 1 for any other error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OmnidError as e:
            code = getattr(e, "code", type(e).__name__.lower())
            if kwargs.get("as_json"):
                click.echo(json.dumps({"error": {"code": code, "message": str(e)}}))
            else:
                click.echo(f"omnid: {code}: {e}", err=True)
            sys.exit(EXIT_NOT_RUNNING if isinstance(e, Unavailable) else 1)

    return wrapper


def connect(autostart: bool = True) -> Client:
    return Client(autostart=autostart, client_name="omnid-cli")


def print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [list(headers)] + rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_sessions(sessions: Sequence[Session]) -> None:
    if not sessions:
        click.echo("no sessions")
        return
    print_table(
        ["SESSION", "TOOL", "PID", "TYPE", "STATUS", "STARTED", "LAST ACTIVE", "WORKSPACE"],
        [
            (s.session_id, s.tool_id, s.owner_pid, s.session_type, s.end_reason or "live",
             when(s.started_at), when(s.last_activity), s.workspace)
            for s in sessions
        ],
    )


def print_session(s: Session) -> None:
    fields = [
        ("session", s.session_id),
        ("tool", f"{s.tool_id} {s.tool_version or ''}".strip()),
        ("type", s.session_type),
        ("status", "live" if s.ended_at is None else s.end_reason),
        ("owner", f"pid {s.owner_pid} (start {s.owner_start}, boot {s.boot_id})" if s.owner_pid else None),
        ("workspace", s.workspace),
        ("started", when(s.started_at)),
        ("last active", when(s.last_activity)),
        ("ended", when(s.ended_at) if s.ended_at else None),
        ("metadata", json.dumps(s.metadata, sort_keys=True) if s.metadata else None),
    ]
    for name, value in fields:
        if value is not None:
            click.echo(f"{name + ':':13} {value}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnid")
def main() -> None:
    """omnid: one local daemon that tells every AI tool process which session it is in."""


# --- daemon ----------------------------------------------------------------------


@main.command()
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Append logs here instead of stderr.")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--detach", is_flag=True, help="Run in the background, detached from this terminal.")
@click.option("--ready-fd", type=int, hidden=True, help="Write one readiness line to this inherited fd.")
def serve(log_file: Path | None, log_level: str, detach: bool, ready_fd: int | None) -> None:
    """Run the daemon (in the foreground unless --detach)."""
    from . import server

    os.umask(0o077)  # the database, WAL, log and status file are the user's alone
    paths = daemon_paths()
    if detach:
        _detach(log_file)
    handlers: list[logging.Handler] = [logging.FileHandler(log_file) if log_file else logging.StreamHandler()]
    logging.basicConfig(
        level=log_level.upper(), handlers=handlers, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(server.run(paths, log_path=log_file, ready_fd=ready_fd))


def _detach(log_file: Path | None) -> None:
    """Double fork so the daemon is no child of whoever started it and has no terminal."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if log_file is not None:
        err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(err, 2)
        os.close(err)
    else:
        os.dup2(devnull, 2)
    os.close(devnull)


@main.command()
@json_option
def status(as_json: bool) -> None:
    """Is the daemon running? Exit status 0 if so, 3 if not."""
    try:
        with connect(autostart=False) as client:
            st = client.status()
    except Unavailable as e:
        published = read_status_file()
        tried = [str(p) for p, _ in socket_candidates()]
        if as_json:
            click.echo(json.dumps({"running": False, "reason": str(e), "sockets_tried": tried}))
        else:
            click.echo("omnid is not running")
            click.echo(f"  sockets tried: {', '.join(tried)}")
            if published:
                click.echo(f"  last status file names pid {published.get('pid')} (stale)")
        sys.exit(EXIT_NOT_RUNNING)
    except OmnidError as e:
        click.echo(f"omnid: {getattr(e, 'code', 'error')}: {e}", err=True)
        sys.exit(1)
    if as_json:
        print_json({"running": True, **msgspec.structs.asdict(st), "client_version": __version__})
        return
    print_status(st)


def print_status(st: DaemonStatus) -> None:
    last = (
        f"{when(st.last_reap.at)} ({st.last_reap.trigger}, {st.last_reap.reaped} reaped)" if st.last_reap else "never"
    )
    lines = [
        ("omnid", f"running, pid {st.pid}, version {st.version}, protocol {st.protocol}"),
        ("uptime", duration(st.uptime)),
        ("socket", st.socket),
        ("database", f"{st.database} ({st.database_bytes} bytes, WAL {st.wal_bytes} bytes, schema v{st.schema_version})"),
        ("log", st.log or "stderr"),
        ("live sessions", str(st.live_sessions)),
        ("watching", f"{st.watched_processes} process(es) via {st.watcher}"),
        ("connections", str(st.connections)),
        ("last reap", last),
    ]
    for name, value in lines:
        click.echo(f"{name + ':':15} {value}")


@main.command()
@click.option("--dry-run", is_flag=True, help="Only show what would be reaped.")
@json_option
@fail_cleanly
def reap(dry_run: bool, as_json: bool) -> None:
    """Check every live session's owner now; end those whose process is gone."""
    with connect() as client:
        result: ReapResult = client.reap(dry_run=dry_run)
    if as_json:
        print_json(result)
        return
    verb = "would reap" if dry_run else "reaped"
    click.echo(f"{verb} {len(result.sessions)} session(s)")
    if result.sessions:
        print_table(["SESSION", "TOOL", "PID", "CAUSE"], [(s.session_id, s.tool_id, s.owner_pid, s.cause) for s in result.sessions])


@main.command()
@fail_cleanly
def stop() -> None:
    """Stop the daemon gracefully (clients start it again when they need it)."""
    with connect(autostart=False) as client:
        pid = client.connect().pid
        client.shutdown()
    click.echo(f"omnid (pid {pid}) is stopping")


# --- sessions --------------------------------------------------------------------


@main.group()
def sessions() -> None:
    """List, show and end sessions."""


@sessions.command("list")
@click.option("--tool", "tool_id", help="Only this tool's sessions.")
@click.option("--type", "session_type", help="Only sessions of this type.")
@click.option("--status", type=click.Choice(["live", "ended", "all"]), default="all", show_default=True)
@click.option("--workspace", help="Only sessions in this workspace path.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@json_option
@fail_cleanly
def sessions_list(tool_id, session_type, status, workspace, limit, cursor, as_json) -> None:
    """Sessions, newest first."""
    with connect() as client:
        page = client.list_sessions(
            tool_id=tool_id, session_type=session_type, status=status, workspace=workspace, limit=limit, cursor=cursor
        )
    if as_json:
        print_json(page)
        return
    print_sessions(page.sessions)
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@sessions.command("show")
@click.argument("session_id")
@json_option
@fail_cleanly
def sessions_show(session_id: str, as_json: bool) -> None:
    """One session in full."""
    with connect() as client:
        session = client.get(session_id)
    print_json(session) if as_json else print_session(session)


@sessions.command("end")
@click.argument("session_ids", nargs=-1, required=True)
@json_option
@fail_cleanly
def sessions_end(session_ids: tuple[str, ...], as_json: bool) -> None:
    """End sessions (already ended ones are left as they are)."""
    with connect() as client:
        ended = [client.end(sid) for sid in session_ids]
    if as_json:
        print_json(ended)
        return
    for s in ended:
        click.echo(f"{s.session_id} {s.end_reason}")


# --- one session, for shell hooks ------------------------------------------------


@main.group()
def session() -> None:
    """Bind a session to a process from a shell hook."""


def _parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    return metadata


@session.command("start")
@click.option("--tool", "tool_id", required=True, help="The tool's id, e.g. claude-code.")
@click.option("--pid", type=int, help="Owner process. Default: this command's parent (your shell).")
@click.option("--type", "session_type", default="default", show_default=True)
@click.option("--tool-version")
@click.option("--workspace", help="Default: the owner's working directory.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata; repeatable.")
@json_option
@fail_cleanly
def session_start(tool_id, pid, session_type, tool_version, workspace, meta, as_json) -> None:
    """Print the id of the live session for TOOL and PID, creating it if needed."""
    metadata = _parse_metadata(meta)
    with connect() as client:
        got = client.get_or_create(
            tool_id,
            pid=pid if pid is not None else os.getppid(),
            tool_version=tool_version,
            workspace=workspace,
            session_type=session_type,
            metadata=metadata,
        )
    if as_json:
        print_json(got)
    else:
        click.echo(got.session.session_id)


@session.command("find")
@click.option("--tool", "tool_id", required=True)
@click.option("--pid", type=int, help="Default: this command's parent (your shell).")
@json_option
@fail_cleanly
def session_find(tool_id: str, pid: int | None, as_json: bool) -> None:
    """Print the live session id for TOOL and PID; exit 1 if there is none. Never creates."""
    with connect() as client:
        found = client.find(tool_id, pid=pid if pid is not None else os.getppid())
    if as_json:
        print_json({"session": found})
    elif found is not None:
        click.echo(found.session_id)
    if found is None:
        sys.exit(1)
