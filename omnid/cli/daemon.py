"""Commands about the daemon itself: run, stop, status, reap, stats, its config file, and
the per-user service that runs it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

import click
import msgspec

from omnid_client import OmnidError, Unavailable
from omnid_client.paths import daemon_paths, read_status_file, socket_candidates
from omnid_client.protocol import DaemonStatus, ReapResult, Settings, version_note

from .. import __version__
from ..safefile import os_message
from ._output import (
    EXIT_NOT_RUNNING,
    connect,
    duration,
    fail_cleanly,
    json_option,
    print_fields,
    print_json,
    print_table,
    when,
)

if TYPE_CHECKING:
    from ..offline.service import Manager, Report


@click.command()
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
    from ..daemon import logs, run
    from ..offline.detach import daemonize

    os.umask(0o077)  # the database, WAL, log and status file are the user's alone
    paths = daemon_paths()
    if log_file is not None:
        log_file = log_file.absolute()
    try:
        if detach:
            daemonize(log_file)
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
        run(
            paths, log_path=log_file, ready_fd=ready_fd, log_target=target,
            restart_argv=restart, log_level_fixed=log_level is not None,
        )
    )


@click.command()
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
        (
            "database",
            f"{st.database} ({st.database_bytes} bytes, WAL {st.wal_bytes} bytes, schema v{st.schema_version})",
        ),
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
        lines.append(
            ("set aside", f"{', '.join(st.set_aside)} (corrupt database found at start; kept, a new one is in use)")
        )
    for name, value in lines:
        if value is not None:
            click.echo(f"{name + ':':15} {value}")


@click.command()
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
        print_table(
            ["SESSION", "TOOL", "PID", "CAUSE"],
            [(s.session_id, s.tool_id, s.owner_pid, s.cause) for s in result.sessions],
        )


@click.command()
@fail_cleanly
def stop() -> None:
    """Stop the daemon gracefully (clients start it again when they need it)."""
    with connect(autostart=False) as client:
        pid = client.connect().pid
        client.shutdown()
    click.echo(f"omnid (pid {pid}) is stopping")


@click.command()
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
            (
                "per session",
                f"{st.avg_messages_per_session:.1f} messages, {st.avg_tokens_per_session:.0f} tokens, {avg}",
            ),
        ]
    )
    if st.sessions_by_tool:
        print_table(["TOOL", "SESSIONS"], sorted(st.sessions_by_tool.items(), key=lambda kv: -kv[1]))


@click.group()
def config() -> None:
    """The daemon's config file (reloaded by a running daemon whenever it changes)."""


@config.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def config_check(file: Path | None, as_json: bool) -> None:
    """Validate FILE (default: the config file the daemon reads) and print the settings it gives."""
    from ..config import ConfigError, config_path, read

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


T = TypeVar("T")

manager_option = click.option(
    "--manager", type=click.Choice(["auto", "systemd", "launchd"]), default="auto", show_default=True,
    help="Which service manager's files to handle (auto: systemd on Linux, launchd on macOS).",
)


def _manager(name: str) -> Manager:
    from ..offline.service import ServiceError, detect_manager

    if name != "auto":
        return cast("Manager", name)  # click.Choice allows no other
    try:
        return detect_manager()
    except ServiceError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def service() -> None:
    """Run omnid as a per-user service (systemd user units, or a launchd LaunchAgent)."""


def _service_call(action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``action`` of omnid.service; its ServiceError becomes the command's error."""
    from ..offline.service import ServiceError

    try:
        return action(*args, **kwargs)
    except ServiceError as e:
        raise click.ClickException(str(e)) from None


def _report_and_exit(report: Report, as_json: bool) -> None:
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
    from ..offline.service import install

    _report_and_exit(_service_call(install, _manager(manager), start=not no_start), as_json)


@service.command("uninstall")
@manager_option
@json_option
def service_uninstall(manager: str, as_json: bool) -> None:
    """Stop the service and remove its unit files (a no-op when not installed)."""
    from ..offline.service import uninstall

    _report_and_exit(_service_call(uninstall, _manager(manager)), as_json)


@service.command("status")
@manager_option
@json_option
def service_status(manager: str, as_json: bool) -> None:
    """Whether the service is installed and up to date, and what the service manager says.
    Exit status 0 if installed, 3 if not."""
    from ..offline.service import status as service_state

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
    from ..offline.service import ServiceError, wanted_files

    try:
        files = wanted_files(_manager(manager), python=python)
    except ServiceError as e:
        raise click.ClickException(str(e)) from None
    for path, content in files.items():
        click.echo(f"# {path}")
        click.echo(content.decode(), nl=False)
