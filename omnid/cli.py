"""The ``omnid`` command: each command makes one client call and formats its answer,
as a table for people or as JSON (``--json``) for programs."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn, Sequence

import click
import msgspec

from omnid_client import Client, OmnidError, Unavailable
from omnid_client.paths import daemon_paths, read_status_file, socket_candidates
from omnid_client.protocol import DaemonStatus, ReapResult, Session, Settings, version_note

from . import __version__
from .safefile import atomic_write, os_message

EXIT_NOT_RUNNING = 3

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def fail_cleanly(fn: Callable) -> Callable:
    """Turn omnid errors into one line on stderr (or a JSON error) and an exit status:
    3 when the daemon cannot be reached, 1 for any other error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OmnidError, OSError) as e:
            exit_with_error(e, kwargs.get("as_json", False))

    return wrapper


def exit_with_error(e: OmnidError | OSError, as_json: bool) -> NoReturn:
    """One line on stderr (or a JSON error on stdout), then exit 3 if the daemon cannot be
    reached, else 1: a refusal (another uid, an unsafe socket directory) is not "not running".
    An OSError no command turned into its own error still gets one clean line."""
    code = getattr(e, "code", type(e).__name__.lower()) if isinstance(e, OmnidError) else "io"
    message = str(e) if isinstance(e, OmnidError) or e.filename is None else f"{e.filename}: {os_message(e)}"
    if as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message}}))
    else:
        click.echo(f"omnid: {code}: {message}", err=True)
    sys.exit(EXIT_NOT_RUNNING if isinstance(e, Unavailable) else 1)


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
        ("project", s.project_id),
        ("messages", f"{s.message_count} ({s.total_tokens} tokens, ${s.total_cost:.6f})" if s.message_count else None),
    ]
    print_fields(fields)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnid")
def main() -> None:
    """omnid: one local daemon that tells every AI tool process which session it is in."""


# --- daemon ----------------------------------------------------------------------


@main.command()
@click.option(
    "--log-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Log to this file (rotated) instead of stderr or the journal.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides log_level in the config file (default: info).",
)
@click.option("--detach", is_flag=True, help="Run in the background, detached from this terminal.")
@click.option("--ready-fd", type=int, hidden=True, help="Write one readiness line to this inherited fd.")
def serve(log_file: Path | None, log_level: str | None, detach: bool, ready_fd: int | None) -> None:
    """Run the daemon (in the foreground unless --detach)."""
    from . import logs, server

    os.umask(0o077)  # the database, WAL, log and status file are the user's alone
    paths = daemon_paths()
    if log_file is not None:
        log_file = log_file.absolute()
    try:
        if detach:
            _detach(log_file)
        target = logs.configure(log_file, log_level or "info")
    except OSError as e:
        why = f"cannot use the log file {log_file}: {os_message(e)}"
        click.echo(f"omnid: cannot start: {why}", err=True)
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"error {why}\n".encode())
        sys.exit(1)
    restart = [sys.executable, "-m", "omnid", "serve"]
    if log_file is not None:
        restart += ["--log-file", str(log_file)]
    if log_level is not None:
        restart += ["--log-level", log_level]
    sys.exit(
        server.run(
            paths, log_path=log_file, ready_fd=ready_fd, log_target=target,
            restart_argv=restart, log_level_fixed=log_level is not None,
        )
    )


def _detach(log_file: Path | None) -> None:
    """Double fork so the daemon is no child of whoever started it and has no terminal."""
    from .logs import open_log

    err = open_log(log_file) if log_file is not None else -1  # before forking: its error is the caller's
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err if err >= 0 else devnull, 2)
    if err >= 0:
        os.close(err)
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
        exit_with_error(e, as_json)
    note = version_note(__version__, st.version)
    if as_json:
        print_json({"running": True, **msgspec.structs.asdict(st), "client_version": __version__, "version_note": note})
        return
    print_status(st)
    if note:
        click.echo(f"omnid: {note}", err=True)
    if st.config_state == "invalid":
        click.echo(f"omnid: the config file is invalid and ignored: {st.config_error}", err=True)


def _seconds(value: float, zero: str) -> str:
    return zero if value == 0 else f"{value:g}s"


def _watching(st: DaemonStatus) -> str:
    text = f"{st.watched_processes} process(es) via {st.watcher}"
    swept = st.watched_processes - (st.pidfd_watches or 0)
    if st.pidfd_watches is not None and swept > 0:
        text += f" ({st.pidfd_watches} with a pidfd, the most its fd limit allows; {swept} by the sweep only)"
    return text


def _storage(st: DaemonStatus) -> str | None:
    if st.database_used_bytes is None:
        return None  # an older daemon
    used = f"{st.database_used_bytes} bytes used"
    if st.database_quota:
        used += f" of a {st.database_quota}-byte quota ({100 * st.database_used_bytes / st.database_quota:.0f}%)"
    else:
        used += " (no quota)"
    if st.storage_error:
        used += f"; WRITES REFUSED: {st.storage_error}"
    return used


def print_status(st: DaemonStatus) -> None:
    last = (
        f"{when(st.last_reap.at)} ({st.last_reap.trigger}, {st.last_reap.reaped} reaped)" if st.last_reap else "never"
    )
    config = None
    if st.config_path is not None:
        config = {
            "default": f"{st.config_path} (no such file: built-in defaults)",
            "loaded": f"{st.config_path} (loaded {when(st.config_loaded_at)})",
            "invalid": f"{st.config_path} (INVALID, previous settings kept: {st.config_error})",
        }.get(st.config_state or "", st.config_path)
    settings = None
    if st.settings is not None:
        s = st.settings
        settings = (
            f"sweep every {s.sweep_interval:g}s, idle expiry {_seconds(s.idle_expiry, 'off')}, "
            f"retention {_seconds(s.retention, 'forever')}, durability {s.durability} "
            f"(synchronous={st.synchronous}), log level {s.log_level}"
        )
    socket_line = st.socket + (" (inherited from systemd)" if st.socket_source == "systemd" else "")
    lines = [
        ("omnid", f"running, pid {st.pid}, version {st.version}, protocol {st.protocol}"),
        ("uptime", duration(st.uptime)),
        ("socket", socket_line),
        ("database", f"{st.database} ({st.database_bytes} bytes, WAL {st.wal_bytes} bytes, schema v{st.schema_version})"),
        ("storage", _storage(st)),
        ("log", st.log_target or st.log or "stderr"),
        ("config", config),
        ("settings", settings),
        ("service", (st.managed_by or "none (started on demand)") if st.config_path is not None else None),
        ("upgrade", st.upgrade_error),
        ("live sessions", str(st.live_sessions)),
        ("watching", _watching(st)),
        ("connections", str(st.connections)),
        ("last reap", last),
    ]
    if st.set_aside:
        lines.append(("set aside", f"{', '.join(st.set_aside)} (corrupt database found at start; kept, a new one is in use)"))
    for name, value in lines:
        if value is not None:
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


# --- the service manager and the config file ------------------------------------------


manager_option = click.option(
    "--manager", type=click.Choice(["auto", "systemd", "launchd"]), default="auto", show_default=True,
    help="Which service manager's files to handle (auto: systemd on Linux, launchd on macOS).",
)


def _manager(name: str):
    from .service import ServiceError, detect_manager

    if name != "auto":
        return name
    try:
        return detect_manager()
    except ServiceError as e:
        raise click.ClickException(str(e)) from None


@main.group()
def service() -> None:
    """Run omnid as a per-user service (systemd user units, or a launchd LaunchAgent)."""


def _service_call(action, *args, **kwargs):
    """``action`` of omnid.service; its ServiceError becomes the command's error."""
    from .service import ServiceError

    try:
        return action(*args, **kwargs)
    except ServiceError as e:
        raise click.ClickException(str(e)) from None


def _report_and_exit(report, as_json: bool) -> None:
    """Show what install/uninstall did, and exit 0 if it all went well, else 1."""
    if as_json:
        print_json(report)
    else:
        for f in report.files:
            click.echo(f"{f.state:9} {f.path}")
        for c in report.commands:
            result = "ok" if c.ok else (f"exit status {c.exit_status}" if c.exit_status is not None else "not run")
            click.echo(f"ran       {c.command}: {result}")
            if not c.ok and c.output:
                for line in c.output.splitlines()[-3:]:
                    click.echo(f"          {line}")
        click.echo(report.message, err=not report.ok)
    sys.exit(0 if report.ok else 1)


@service.command("install")
@manager_option
@click.option("--no-start", is_flag=True, help="Only write (and enable) the units; do not start omnid now.")
@json_option
def service_install(manager: str, no_start: bool, as_json: bool) -> None:
    """Write the unit files for this interpreter and have the service manager start omnid.
    Running it again updates what changed and is otherwise a no-op."""
    from .service import install

    _report_and_exit(_service_call(install, _manager(manager), start=not no_start), as_json)


@service.command("uninstall")
@manager_option
@json_option
def service_uninstall(manager: str, as_json: bool) -> None:
    """Stop the service and remove its unit files (a no-op when not installed)."""
    from .service import uninstall

    _report_and_exit(_service_call(uninstall, _manager(manager)), as_json)


@service.command("status")
@manager_option
@json_option
def service_status(manager: str, as_json: bool) -> None:
    """Whether the service is installed and up to date, and what the service manager says.
    Exit status 0 if installed, 3 if not."""
    from .service import status as service_state

    st = _service_call(service_state, _manager(manager))
    if as_json:
        print_json(st)
    else:
        files = ", ".join(f"{f.path} ({f.state})" for f in st.files)
        verdict = "installed" if st.installed else "not installed"
        if st.installed and not st.up_to_date:
            verdict += ", differs from what `omnid service install` would write now"
        print_fields([("manager", st.manager), ("service", verdict), ("files", files)])
        for key, value in st.state.items():
            click.echo(f"{key + ':':13} {value}")
        if st.detail:
            click.echo(f"{'note:':13} {st.detail}")
    sys.exit(0 if st.installed else EXIT_NOT_RUNNING)


@service.command("show")
@manager_option
@click.option("--python", "python", help="Interpreter to name (default: this one).")
def service_show(manager: str, python: str | None) -> None:
    """Print the files `omnid service install` would write, without writing them."""
    from .service import ServiceError, wanted_files

    try:
        files = wanted_files(_manager(manager), python=python)
    except ServiceError as e:
        raise click.ClickException(str(e)) from None
    for path, content in files.items():
        click.echo(f"# {path}")
        click.echo(content.decode(), nl=False)


@main.group()
def config() -> None:
    """The daemon's config file (reloaded by a running daemon whenever it changes)."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def config_check(file: Path | None, as_json: bool) -> None:
    """Validate FILE (default: the config file the daemon reads) and print the settings it gives."""
    from .config import ConfigError, config_path, read

    path = file or config_path()
    try:
        settings = read(path)
    except ConfigError as e:
        if as_json:
            click.echo(json.dumps({"path": str(path), "error": str(e)}))
        else:
            click.echo(f"omnid: invalid config: {e}", err=True)
        sys.exit(1)
    if as_json:
        print_json({"path": str(path), "exists": settings is not None, "settings": settings or Settings()})
        return
    click.echo(f"{path}: {'valid' if settings is not None else 'no such file, so the defaults apply'}")
    for name, value in msgspec.structs.asdict(settings or Settings()).items():
        click.echo(f"  {name} = {json.dumps(value)}")


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
@click.option("--pid", type=int, help="Owner process (any of yours). Default: this command's parent (your shell).")
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
            # Acting for our parent: if it died and its pid was reused, refuse the stranger.
            owner_must_be_ancestor=pid is None,
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


@sessions.command("summary")
@click.argument("session_id")
@json_option
@fail_cleanly
def sessions_summary(session_id: str, as_json: bool) -> None:
    """Counts, tokens, cost and times of one session."""
    with connect() as client:
        s = client.session_summary(session_id)
    if as_json:
        print_json(s)
        return
    roles = ", ".join(f"{n} {role}" for role, n in sorted(s.messages_by_role.items())) or "none"
    print_fields(
        [
            ("session", s.session_id),
            ("tool", s.tool_id),
            ("project", s.project_id),
            ("status", "live" if s.live else "ended"),
            ("messages", f"{s.message_count} ({roles})"),
            ("tokens", s.total_tokens),
            ("cost", f"${s.total_cost:.6f}"),
            ("tasks", s.task_count),
            ("context", f"{s.context_events} event(s)"),
            ("memory", "yes" if s.has_memory else "no"),
            ("started", when(s.started_at)),
            ("last active", when(s.last_activity)),
            ("duration", duration(s.duration)),
        ]
    )


def print_fields(fields: Sequence[tuple[str, Any]]) -> None:
    for name, value in fields:
        if value is not None:
            click.echo(f"{name + ':':13} {value}")


@main.command()
@json_option
@fail_cleanly
def stats(as_json: bool) -> None:
    """Totals and averages over everything omnid holds."""
    with connect() as client:
        st = client.stats()
    if as_json:
        print_json(st)
        return
    avg = duration(st.avg_session_seconds) if st.avg_session_seconds is not None else "-"
    print_fields(
        [
            ("sessions", f"{st.sessions} ({st.live_sessions} live, {st.ended_sessions} ended)"),
            ("projects", st.projects),
            ("messages", st.messages),
            ("tokens", st.total_tokens),
            ("cost", f"${st.total_cost:.6f}"),
            ("memories", f"{st.project_memories} project, {st.session_memories} session"),
            ("tasks", f"{st.tasks} ({st.open_tasks} open)"),
            ("per session", f"{st.avg_messages_per_session:.1f} messages, {st.avg_tokens_per_session:.0f} tokens, {avg}"),
        ]
    )
    if st.sessions_by_tool:
        print_table(["TOOL", "SESSIONS"], sorted(st.sessions_by_tool.items(), key=lambda kv: -kv[1]))


# --- projects and their memories ----------------------------------------------------


def project_options(fn: Callable) -> Callable:
    fn = click.option("--workspace", help="Any path inside the project. Default: the current directory.")(fn)
    return click.option("--project", "project_id", help="Project id (prj_…).")(fn)


@main.group()
def projects() -> None:
    """Projects: the VCS root of a session's workspace."""


@projects.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor")
@json_option
@fail_cleanly
def projects_list(limit: int, cursor: str | None, as_json: bool) -> None:
    """Projects, most recently active first."""
    with connect() as client:
        page = client.list_projects(limit=limit, cursor=cursor)
    if as_json:
        print_json(page)
        return
    if not page.projects:
        click.echo("no projects")
    else:
        print_table(
            ["PROJECT", "NAME", "VCS", "SESSIONS", "LIVE", "MEMORIES", "LAST ACTIVE", "ROOT"],
            [
                (p.project_id, p.name, p.vcs, p.session_count, p.live_sessions, p.memory_count, when(p.last_activity), p.root)
                for p in page.projects
            ],
        )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@projects.command("show")
@project_options
@json_option
@fail_cleanly
def projects_show(project_id: str | None, workspace: str | None, as_json: bool) -> None:
    """One project (default: the one containing the current directory)."""
    with connect() as client:
        p = client.get_project(project_id, workspace=workspace)
    if as_json:
        print_json(p)
        return
    print_fields(
        [
            ("project", p.project_id),
            ("name", p.name),
            ("root", p.root),
            ("vcs", p.vcs or "none"),
            ("sessions", f"{p.session_count} ({p.live_sessions} live)"),
            ("memories", p.memory_count),
            ("created", when(p.created_at)),
            ("last active", when(p.last_activity)),
        ]
    )


@main.group()
def memories() -> None:
    """Project memories: versioned key/value notes, optionally expiring."""


def print_memories(items: Sequence[Any]) -> None:
    if not items:
        click.echo("no memories")
        return
    print_table(
        ["KEY", "VERSION", "READS", "LAST READ", "EXPIRES", "VALUE"],
        [(m.key, m.version, m.accessed_count, when(m.last_accessed), when(m.expires_at), _short(m.value)) for m in items],
    )


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


@memories.command("list")
@project_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@fail_cleanly
def memories_list(project_id, workspace, limit, as_json) -> None:
    """Live memories, most recently read first."""
    with connect() as client:
        items = client.list_memories(project_id=project_id, workspace=workspace, limit=limit)
    print_json(items) if as_json else print_memories(items)


@memories.command("get")
@click.argument("key")
@project_options
@json_option
@fail_cleanly
def memories_get(key, project_id, workspace, as_json) -> None:
    """Print a memory's value (a read: it counts as an access)."""
    with connect() as client:
        m = client.get_memory(key, project_id=project_id, workspace=workspace)
    if as_json:
        print_json(m)
    else:
        click.echo(m.value if isinstance(m.value, str) else json.dumps(m.value, indent=2, sort_keys=True))


@memories.command("put")
@click.argument("key")
@click.argument("value")
@project_options
@click.option("--json-value", is_flag=True, help="VALUE is JSON, not text.")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), help="Expire after this many seconds.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata; repeatable.")
@json_option
@fail_cleanly
def memories_put(key, value, project_id, workspace, json_value, ttl, meta, as_json) -> None:
    """Store VALUE under KEY; an earlier value is kept in the history."""
    if json_value:
        try:
            value = json.loads(value)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="VALUE") from None
    with connect() as client:
        m = client.put_memory(
            key, value, project_id=project_id, workspace=workspace, metadata=_parse_metadata(meta), ttl=ttl
        )
    if as_json:
        print_json(m)
    else:
        click.echo(f"{m.memory_id} {m.key} v{m.version}")


@memories.command("delete")
@click.argument("key")
@project_options
@json_option
@fail_cleanly
def memories_delete(key, project_id, workspace, as_json) -> None:
    """Delete a memory and its history."""
    with connect() as client:
        result = client.delete_memory(key, project_id=project_id, workspace=workspace)
    print_json(result) if as_json else click.echo(f"deleted {key}")


@memories.command("history")
@click.argument("key")
@project_options
@json_option
@fail_cleanly
def memories_history(key, project_id, workspace, as_json) -> None:
    """Every version of a memory, oldest first."""
    with connect() as client:
        h = client.memory_history(key, project_id=project_id, workspace=workspace)
    if as_json:
        print_json(h)
        return
    print_table(["VERSION", "WRITTEN", "EXPIRES", "VALUE"], [(v.version, when(v.created_at), when(v.expires_at), _short(v.value)) for v in h.versions])


# --- what happened in a session ---------------------------------------------------


@main.command()
@click.argument("session_id")
@json_option
@fail_cleanly
def context(session_id: str, as_json: bool) -> None:
    """A session's context: files, searches, decisions, memories, changes."""
    with connect() as client:
        ctx = client.get_context(session_id)
    if as_json:
        print_json(ctx)
        return
    click.echo(f"{ctx.size.events} event(s), {ctx.size.bytes} bytes{' (lists capped)' if ctx.size.truncated else ''}")
    sections = [
        ("files", ["IMPORTANCE", "READS", "LAST", "PATH"], [(f"{f.importance:.2f}", f.accesses, when(f.last_access), f.path) for f in ctx.files]),
        ("changes", ["CHANGE", "TIMES", "LAST", "PATH"], [(c.change, c.changes, when(c.at), c.path) for c in ctx.changes]),
        ("searches", ["AT", "QUERY"], [(when(s.at), s.query) for s in ctx.searches]),
        ("decisions", ["AT", "DECISION"], [(when(d.at), d.text) for d in ctx.decisions]),
        ("memories", ["AT", "SOURCE", "REF"], [(when(m.at), m.source, m.ref) for m in ctx.memories]),
    ]
    for title, headers, rows in sections:
        if rows:
            click.echo(f"\n{title}:")
            print_table(headers, rows)


@main.group()
def messages() -> None:
    """A session's messages."""


@messages.command("list")
@click.argument("session_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", "after_seq", type=click.IntRange(min=0), default=0, help="Start after this sequence number.")
@json_option
@fail_cleanly
def messages_list(session_id: str, limit: int, after_seq: int, as_json: bool) -> None:
    """Messages in order."""
    with connect() as client:
        page = client.list_messages(session_id, limit=limit, after_seq=after_seq)
    if as_json:
        print_json(page)
        return
    if not page.messages:
        click.echo("no messages")
    for m in page.messages:
        click.echo(f"#{m.seq} {when(m.created_at)} {m.role} ({m.tokens_used} tokens): {_short(m.content, 200)}")
    if page.next_after_seq is not None:
        click.echo(f"more: --after {page.next_after_seq}", err=True)


@main.group()
def tasks() -> None:
    """Tasks and their interactions."""


@tasks.command("list")
@click.option("--session", "session_id")
@click.option("--status", type=click.Choice(["open", "done", "failed", "cancelled"]))
@click.option("--external-id")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor")
@json_option
@fail_cleanly
def tasks_list(session_id, status, external_id, limit, cursor, as_json) -> None:
    """Tasks, newest first."""
    with connect() as client:
        page = client.list_tasks(session_id=session_id, status=status, external_id=external_id, limit=limit, cursor=cursor)
    if as_json:
        print_json(page)
        return
    if not page.tasks:
        click.echo("no tasks")
    else:
        print_table(
            ["TASK", "STATUS", "SESSION", "EXTERNAL ID", "STEPS", "UPDATED", "TITLE"],
            [(t.task_id, t.status, t.session_id, t.external_id, t.interaction_count, when(t.updated_at), _short(t.title)) for t in page.tasks],
        )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@tasks.command("show")
@click.argument("task_id")
@json_option
@fail_cleanly
def tasks_show(task_id: str, as_json: bool) -> None:
    """A task with its interactions."""
    with connect() as client:
        t = client.get_task(task_id)
    if as_json:
        print_json(t)
        return
    print_fields(
        [
            ("task", t.task_id),
            ("title", t.title),
            ("status", t.status),
            ("session", t.session_id),
            ("external id", t.external_id),
            ("created", when(t.created_at)),
            ("updated", when(t.updated_at)),
            ("ended", when(t.ended_at) if t.ended_at else None),
        ]
    )
    for i in t.interactions or []:
        click.echo(f"  {when(i.created_at)} {i.kind}: {_short(i.content, 200)}")


@main.command()
@click.argument("query")
@click.option("--project", "project_id")
@click.option("--session", "session_id")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["message", "memory", "session_memory", "decision"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
@fail_cleanly
def search(query, project_id, session_id, kinds, limit, as_json) -> None:
    """Full-text search over messages, memories and decisions, best match first."""
    with connect() as client:
        hits = client.search(query, project_id=project_id, session_id=session_id, kinds=list(kinds) or None, limit=limit)
    if as_json:
        print_json(hits)
        return
    if not hits:
        click.echo("no matches")
        return
    print_table(["KIND", "REF", "SESSION", "WHEN", "MATCH"], [(h.kind, h.ref_id, h.session_id, when(h.created_at), h.snippet) for h in hits])


@main.group()
def cleanup() -> None:
    """Explicit clean-ups; omnid deletes nothing on its own except expired memories (and,
    with a retention age configured, archived old sessions: see `omnid retention`)."""


def _age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    unit = units.get(text[-1:], 0)
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        seconds = -1.0
    if not (0 <= seconds < float("inf")):
        raise click.BadParameter(f"{text!r} is not an age like 90s, 30m, 12h, 7d or 2w", param_hint="--older-than")
    return seconds


@cleanup.command("orphans")
@click.option("--older-than", "older_than", default="7d", show_default=True, help="Age: 90s, 30m, 12h, 7d, 2w.")
@click.option("--dry-run", is_flag=True)
@json_option
@fail_cleanly
def cleanup_orphans(older_than: str, dry_run: bool, as_json: bool) -> None:
    """Delete ended sessions older than --older-than that hold no tasks, messages, context or memories."""
    seconds = _age(older_than)
    with connect() as client:
        result = client.cleanup_orphans(seconds, dry_run=dry_run)
    if as_json:
        print_json(result)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(result.session_ids)} orphan session(s)")
    for sid in result.session_ids:
        click.echo(sid)


# --- backup, export, import, retention ----------------------------------------------


def transfer_client() -> Client:
    """A client for calls that move many records: a generous deadline per batch."""
    return Client(client_name="omnid-cli", timeout=120.0)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@json_option
@fail_cleanly
def backup(path: Path, force: bool, as_json: bool) -> None:
    """Copy the database to PATH, consistently, while omnid runs (or not).

    Uses SQLite's online backup from a read-only connection, checks the copy's integrity,
    and only then puts it at PATH. An existing PATH is refused unless --force."""
    from . import transfer

    info = transfer.backup(daemon_paths().database, path, force=force)
    if as_json:
        print_json(info)
    else:
        click.echo(f"backed up {info['sessions']} session(s), {info['memories']} memories to {info['path']} "
                   f"({info['bytes']} bytes, schema v{info['schema_version']}, integrity ok)")


def _since(text: str | None) -> float | None:
    """An age (90s, 30m, 12h, 7d, 2w) before now, or an ISO date/time (local unless zoned)."""
    import re

    if text is None:
        return None
    if re.fullmatch(r"\d+(\.\d*)?[smhdw]?", text):
        return datetime.now().timestamp() - _age(text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither an age like 7d nor a date like 2024-05-01", param_hint="--since") from None


@main.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--session", "session_ids", multiple=True, help="Only this session (repeatable).")
@click.option("--project", "project_ids", multiple=True, help="Only this project's sessions and memories (repeatable).")
@click.option("--since", help="Only sessions active, and memories updated, since: an age (7d) or a date.")
@json_option
@fail_cleanly
def export_command(output, force, session_ids, project_ids, since, as_json) -> None:
    """Export sessions (with their context, messages, memories, tasks), projects and project
    memories as JSONL, one record per line, in a stable order (see `omnid import`)."""
    from . import transfer

    if as_json and output is None:
        raise click.UsageError("--json prints a summary, so the export needs --output")
    filters = {
        "session_ids": list(session_ids) or None,
        "project_ids": list(project_ids) or None,
        "since": _since(since),
    }
    database = daemon_paths().database
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
    if as_json:
        print_json({"path": str(output), "records": counts})
    else:
        summary = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing"
        click.echo(f"exported {summary}" + (f" to {output}" if output else ""), err=True)


def print_import(result: Any, source: dict | None = None) -> None:
    from .identity import GONE

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
        click.echo(f"{len(result.reaped)} live session(s) whose owner process is gone {'would be' if result.dry_run else 'were'} ended as reaped")
        for session_id, why in result.why.items():
            if why not in GONE:
                click.echo(f"  {session_id}: {why}")


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check the file and report what would be imported; write nothing.")
@json_option
@fail_cleanly
def import_command(file: Path, dry_run: bool, as_json: bool) -> None:
    """Import a JSONL export through the daemon, keeping ids. Every line is checked before
    anything is written; records already present are left alone, so importing the same
    file again adds nothing."""
    from . import transfer

    with transfer_client() as client:
        result = transfer.import_file(client, file, dry_run=dry_run)
    print_json(result) if as_json else print_import(result)


@main.command("import-omnimemory")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Read and convert, report what would be imported; write nothing.")
@json_option
@fail_cleanly
def import_omnimemory(path: Path, dry_run: bool, as_json: bool) -> None:
    """Import sessions (with their context) and project memories from an OmniMemory
    dashboard.db, read-only. Sessions OmniMemory never ended are imported as ended
    (reaped) at their last activity; expired memories are skipped."""
    from . import omnimemory, transfer

    records, report = omnimemory.read(path)
    with transfer_client() as client:
        result = transfer.send(client, enumerate(records, 1), dry_run=dry_run)
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


@main.group()
def retention() -> None:
    """Archive and delete ended sessions older than an age (the config's retention for the daemon)."""


@retention.command("run")
@click.option("--older-than", help="Sessions that ended this long ago: 90s, 30m, 12h, 7d, 2w. Default: the daemon's retention.")
@click.option("--archive", type=click.Path(dir_okay=False, path_type=Path),
              help="Append the sessions to this JSONL file before deleting them (default: archive.jsonl in omnid's state dir).")
@click.option("--purge", is_flag=True, help="Delete without archiving.")
@click.option("--dry-run", is_flag=True, help="Only show which sessions would go.")
@json_option
@fail_cleanly
def retention_run(older_than: str | None, archive: Path | None, purge: bool, dry_run: bool, as_json: bool) -> None:
    """Archive (or purge) and delete ended sessions that ended longer ago than the age."""
    if archive is not None and purge:
        raise click.UsageError("--archive and --purge exclude each other")
    seconds = _age(older_than) if older_than is not None else None
    target = str(archive.absolute()) if archive is not None else None
    session_ids: list[str] = []
    with transfer_client() as client:
        while True:
            result = client.run_retention(older_than=seconds, archive=target, purge=purge, dry_run=dry_run)
            session_ids += result.session_ids
            if dry_run or not result.remaining or not result.session_ids:
                break
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
    with connect() as client:
        st = client.status().retention
    if as_json:
        print_json(st)
        return
    if st is None:
        click.echo("this daemon does not report retention")
        return
    last = st.last_run
    print_fields(
        [
            ("retention", duration(st.age) if st.age else "off (ended sessions are kept)"),
            ("archive", st.archive),
            ("runs", f"{st.runs} ({st.archived} archived, {st.purged} purged, {st.failures} failed)"),
            ("last run", f"{when(last.at)} ({last.trigger}, {last.deleted} deleted{', ' + last.error if last.error else ''})" if last else "never"),
            ("next run", when(st.next_run) if st.next_run else None),
        ]
    )
