"""Commands about the daemon itself: run, stop, status, reap, stats, metrics, its config file, and
the per-user service that runs it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

import click
import msgspec

from omnid_client import Client, Unsupported
from omnid_client.paths import daemon_paths
from omnid_client.protocol import DaemonMetrics, ReapResult, Settings

from ..safefile import os_message
from . import fast
from ._metrics import summary_fields, summary_json
from ._output import (
    EXIT_NOT_RUNNING,
    connect,
    duration,
    fail_cleanly,
    json_option,
    print_fields,
    print_json,
    print_table,
)
from .exits import EXIT_ALREADY_RUNNING

SERVE_READY_TIMEOUT = 60.0
"""How long ``serve --detach`` waits for the daemon it started to answer (a big database's
first open and migration included)."""

if TYPE_CHECKING:
    from ..offline.service import Manager, Report


@click.command()
@click.option(
    "--log-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Log to this file (rotated) instead of stderr or the journal (--detach: omnid.log in the state dir).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides log_level in the config file (default: info).",
)
@click.option("--detach", is_flag=True, help="Run in the background, detached from this terminal.")
@click.option("--ready-fd", type=int, hidden=True, help="Write one readiness line to this inherited fd.")
@json_option
def serve(log_file: Path | None, log_level: str | None, detach: bool, ready_fd: int | None, as_json: bool) -> None:
    """Run the daemon (in the foreground unless --detach). With --detach, prints the pid of
    the daemon it started once that answers. Exit status 4 (and its pid) if a daemon already
    serves this OMNID_HOME; --json prints {"pid": N} once ready (or the error)."""
    from ..daemon import logs, run
    from ..offline.detach import daemonize

    os.umask(0o077)  # the database, WAL, log and status file are the user's alone
    paths = daemon_paths()
    if log_file is None and detach:
        log_file = paths.log  # a detached daemon has no stderr worth writing to; `omnid logs` reads this
    if log_file is not None:
        log_file = log_file.absolute()
    announce: Callable[[str], object] | None = None
    if ready_fd is None:
        announce = functools.partial(announced, as_json=as_json, detached=detach)
    try:
        if detach:
            if ready_fd is None:  # tell this command's caller the pid, through a pipe across the forks
                read_end, ready_fd = os.pipe()
                daemonize(log_file, parent=lambda: announced(_read_ready(read_end, ready_fd), as_json, True))
                os.close(read_end)
                announce = None
            else:
                daemonize(log_file)
        target = logs.configure(log_file, log_level or "info")
    except OSError as e:
        why = f"cannot use the log file {log_file}: {os_message(e)}"
        if not as_json:
            click.echo(f"omnid: cannot start: {why}", err=True)
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"error {why}\n".encode())
        sys.exit(announced(f"error {why}", as_json, False))
    restart = [sys.executable, "-m", "omnid", "serve"]
    if log_file is not None:
        restart += ["--log-file", str(log_file)]
    if log_level is not None:
        restart += ["--log-level", log_level]
    sys.exit(
        run(
            paths, log_path=log_file, ready_fd=ready_fd, log_target=target,
            restart_argv=restart, log_level_fixed=log_level is not None, announce=announce,
        )
    )


def announced(line: str, as_json: bool, detached: bool) -> int:
    """Tell the user what became of ``serve`` from the daemon's readiness line, and return the
    exit status. In the foreground the daemon has said it on stderr already (human output)."""
    kind, _, rest = line.partition(" ")
    if kind == "ready":
        if as_json:
            print_json({"pid": int(rest)})
        elif detached:
            click.echo(f"omnid started (pid {rest})")
        return 0
    if kind == "running":
        code, status, why = "already_running", EXIT_ALREADY_RUNNING, f"omnid is already running (pid {rest})"
    else:
        code, status = "cannot_start", 1
        why = f"cannot start: {rest}" if kind == "error" else "the daemon exited before it was ready"
    if as_json:
        error: dict[str, Any] = {"code": code, "message": why}
        if kind == "running":
            error["pid"] = int(rest)
        click.echo(json.dumps({"error": error}))
    elif detached:
        click.echo(f"omnid: {why}; see {daemon_paths().log}" if code == "cannot_start" else f"omnid: {why}", err=True)
    return status


def _read_ready(read_end: int, write_end: int) -> str:
    """The detached daemon's readiness line ("ready PID", "running PID", "error WHY"), or ""
    if it exited first."""
    from omnid_client._spawn import _read_line

    os.close(write_end)
    return _read_line(read_end, time.monotonic() + SERVE_READY_TIMEOUT)


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Is the daemon running? Exit status 0 if so, 3 if not, 1 if it cannot be asked (a refusal:
    another user's daemon, an unsafe socket directory), with the reason."""
    sys.exit(fast.status(as_json))


@click.command()
@click.option("--dry-run", is_flag=True, help="Only show what would be reaped.")
@json_option
@fail_cleanly
def reap(dry_run: bool, as_json: bool) -> None:
    """Check every live session's owner now; end those whose process is gone."""
    with connect(autostart=not dry_run) as client:
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
@json_option
@fail_cleanly
def stop(as_json: bool) -> None:
    """Stop the daemon gracefully (clients start it again when they need it).
    Exit status 3 if it is not running."""
    with connect(autostart=False) as client:
        pid = client.connect().pid
        client.shutdown()
    if as_json:
        print_json({"pid": pid, "stopping": True})
    else:
        click.echo(f"omnid (pid {pid}) is stopping")


@click.command()
@json_option
@fail_cleanly
def stats(as_json: bool) -> None:
    """Totals and averages over everything omnid holds."""
    with connect(autostart=False) as client:
        st = client.stats()
        metrics = _metrics_of(client)
    if as_json:
        print_json({**msgspec.structs.asdict(st), "metrics": summary_json(metrics) if metrics else None})
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
            ("counters", ", ".join(f"{k} {v}" for k, v in st.counters.items()) or None),
        ]
    )
    if st.sessions_by_tool:
        print_table(["TOOL", "SESSIONS"], sorted(st.sessions_by_tool.items(), key=lambda kv: -kv[1]))
    if metrics is not None:
        print_fields(summary_fields(metrics))


def _metrics_of(client: Client) -> DaemonMetrics | None:
    """The daemon's metrics; None from a daemon older than ``daemon.metrics``."""
    try:
        return client.metrics()
    except Unsupported:
        return None


@click.command()
@click.option("--openmetrics", is_flag=True, help="OpenMetrics 1.0 text (ends in '# EOF') instead of Prometheus 0.0.4.")
@json_option
@fail_cleanly
def metrics(openmetrics: bool, as_json: bool) -> None:
    """Every counter and histogram of the daemon, in the Prometheus text format."""
    from ..metrics.exposition import render

    with connect(autostart=False) as client:
        snapshot = client.metrics()
    if as_json:
        print_json(snapshot)
    else:
        click.echo(render(snapshot, openmetrics=openmetrics), nl=False)


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
        if value is not None:  # unset (metrics_textfile): TOML has no null
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
@json_option
def service_show(manager: str, python: str | None, as_json: bool) -> None:
    """Print the files `omnid service install` would write, without writing them."""
    from ..offline.service import ServiceFile, wanted_files

    files = _service_call(wanted_files, _manager(manager), python=python)
    if as_json:
        print_json([ServiceFile(str(path), content.decode()) for path, content in files.items()])
        return
    for path, content in files.items():
        click.echo(f"# {path}")
        click.echo(content.decode(), nl=False)
