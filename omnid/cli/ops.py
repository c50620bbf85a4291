"""Commands for running omnid rather than using it: ``doctor``, ``logs``, ``completion`` (with
the completions of session ids and tool names) and ``schema``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from omnid_client.paths import daemon_paths

from ._output import json_option, parse_since, print_json
from .exits import EXIT_ERROR

COMPLETION_TIMEOUT = 0.3
"""Seconds a completion waits for the daemon: a shell must never hang on a <Tab>."""
SHELLS = ("bash", "zsh", "fish")


# --- doctor ------------------------------------------------------------------------------


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check everything omnid depends on and say how to fix each problem: the daemon, its
    socket directory, versions, the service unit, the database (integrity, quota), the config,
    file descriptor limits, clocks and the log's recent errors. Never starts the daemon.
    Exit status 0 when no check failed (warnings allowed), else 1."""
    from ..offline.doctor import run_checks

    report = run_checks()
    if as_json:
        print_json(report)
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
        for check in report.checks:
            click.echo(f"[{marks[check.state]}] {check.name}: {check.message}")
            if check.fix and check.state in ("warn", "fail"):
                click.echo(f"       fix: {check.fix}")
        failed = sum(c.state == "fail" for c in report.checks)
        warned = sum(c.state == "warn" for c in report.checks)
        click.echo(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "all checks passed")
    sys.exit(0 if report.ok else EXIT_ERROR)


# --- logs --------------------------------------------------------------------------------


def log_source(choice: str) -> tuple[str, Path | None]:
    """("journal", None) or ("file", path): where the daemon logs, asked of a running daemon
    (never started), else guessed from an installed systemd unit."""
    from omnid_client import Client, OmnidError
    from omnid_client.paths import installed_service

    if choice == "file":
        return "file", daemon_paths().log
    if choice == "journal":
        return "journal", None
    try:
        with Client(autostart=False, timeout=2.0, client_name="omnid-cli") as client:
            st = client.status()
    except OmnidError:
        st = None
    if st is not None:
        if st.log_target in ("journald", "stderr (systemd)"):
            return "journal", None
        if st.log:
            return "file", Path(st.log)
        raise click.ClickException(
            f"the running daemon (pid {st.pid}) logs to {st.log_target or 'stderr'}, the terminal it was started in"
        )
    service = installed_service()
    if service is not None and service.manager == "systemd":
        return "journal", None
    return "file", daemon_paths().log


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (across rotations) until Ctrl-C.")
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the last records to print first.")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error"]), help="Only this level and above.")
@click.option("--since", help="Only records since: an age (30m, 2h, 7d) or a date/time.")
@click.option("--source", type=click.Choice(["auto", "file", "journal"]), default="auto", show_default=True,
              help="auto: the journal when systemd runs the daemon, else the log file.")
@json_option
def logs(follow: bool, count: int, level: str | None, since: str | None, source: str, as_json: bool) -> None:
    """The daemon's log: from the user journal (journalctl --user -u omnid.service) when
    systemd runs it, else from its log file (omnid.log beside the database, rotated).
    Never starts the daemon. --json prints one object per record and line."""
    from ..offline import logread

    after = parse_since(since)

    def emit(record: logread.LogRecord) -> None:
        import msgspec

        line = msgspec.json.encode(record).decode() if as_json else logread.format_record(record)
        click.echo(line)

    kind, path = log_source(source)
    try:
        if kind == "journal":
            status = logread.journal(emit, count, follow, level, after)
            sys.exit(0 if status in (0, -2, 130) or follow else status)
        assert path is not None
        end: logread.Position | None = None
        try:
            found, end = logread.tail_file(path, count, level, after)
            for record in found:
                emit(record)
        except FileNotFoundError:
            if not follow:
                raise click.ClickException(f"no log file at {path} (has omnid run with this OMNID_HOME?)") from None
            end = (0, 0, 0)  # whatever file appears: from its start
        if follow:
            logread.follow_file(path, emit, level, after, start=end)
    except KeyboardInterrupt:
        sys.exit(0)  # the way to stop following: not an error
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head)
    except OSError as e:
        raise click.ClickException(str(e)) from None


# --- completion --------------------------------------------------------------------------


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@json_option
def completion(shell: str, as_json: bool) -> None:
    """Print the shell code that completes omnid's commands, options, session ids and tool
    names. Load it with, for bash: eval "$(omnid completion bash)" in ~/.bashrc; zsh: the same
    in ~/.zshrc (after compinit); fish: omnid completion fish > ~/.config/fish/completions/omnid.fish.
    Completing ids asks a running daemon (never starts one) and offers nothing when none runs."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click knows all three
    root = click.get_current_context().find_root().command  # the omnid group
    script = cls(root, {}, "omnid", "_OMNID_COMPLETE").source()
    if as_json:
        click.echo(json.dumps({"shell": shell, "script": script}))
    else:
        click.echo(script)


def _quick_client() -> Any:
    from omnid_client import Client

    return Client(autostart=False, timeout=COMPLETION_TIMEOUT, fail_open=True, client_name="omnid-completion")


def complete_session_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Ids of sessions (live first, then the newest) starting with what was typed."""
    from click.shell_completion import CompletionItem

    with _quick_client() as client:
        page = client.list_sessions(limit=200)
    if page is None:
        return []
    return [
        CompletionItem(s.session_id, help=f"{s.tool_id} {'live' if s.ended_at is None else 'ended'}")
        for s in sorted(page.sessions, key=lambda s: s.ended_at is not None)
        if s.session_id.startswith(incomplete)
    ]


def complete_tool_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Tool ids of sessions omnid holds, starting with what was typed."""
    with _quick_client() as client:
        page = client.list_sessions(limit=500)
    if page is None:
        return []
    return sorted({s.tool_id for s in page.sessions if s.tool_id.startswith(incomplete)})


def add_completions(group: click.Group) -> None:
    """Give every session id and tool id parameter of ``group``'s commands its completion."""
    for command in _leaves(group):
        for param in command.params:
            if param.name in ("session_id", "session_ids"):
                param._custom_shell_complete = complete_session_id
            elif param.name == "tool_id":
                param._custom_shell_complete = complete_tool_id


def _leaves(group: click.Group) -> list[click.Command]:
    found: list[click.Command] = []
    for command in group.commands.values():
        found += _leaves(command) if isinstance(command, click.Group) else [command]
    return found


# --- schema ------------------------------------------------------------------------------


@click.command()
@click.argument("command", nargs=-1, required=True)
def schema(command: tuple[str, ...]) -> None:
    """Print the JSON Schema of what COMMAND prints with --json (e.g. `omnid schema sessions
    list`; `omnid schema error` for the failure object every command prints). `omnid schema
    all` prints every command's, by name."""
    from .schemas import SCHEMAS, schema as schema_of

    name = " ".join(command)
    if name == "all":
        print_json({cmd: schema_of(cmd) for cmd in SCHEMAS})
        return
    try:
        print_json(schema_of(name))
    except KeyError:
        raise click.BadParameter(
            f"{name!r} is no command with --json; one of: {', '.join(SCHEMAS)}", param_hint="COMMAND"
        ) from None
