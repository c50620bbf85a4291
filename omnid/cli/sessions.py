"""Commands about sessions, binding one to a shell, and the projects sessions belong to."""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence, cast

import click

from omnid_client.protocol import Session, SessionStatus

from ._output import (
    connect,
    duration,
    fail_cleanly,
    json_option,
    parse_metadata,
    print_fields,
    print_json,
    print_table,
    project_options,
    when,
)


@click.group()
def sessions() -> None:
    """List, show and end sessions."""


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


@sessions.command("list")
@click.option("--tool", "tool_id", help="Only this tool's sessions.")
@click.option("--type", "session_type", help="Only sessions of this type.")
@click.option("--status", type=click.Choice(["live", "ended", "all"]), default="all", show_default=True)
@click.option("--workspace", help="Only sessions in this workspace path.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@json_option
@fail_cleanly
def sessions_list(
    tool_id: str | None, session_type: str | None, status: str, workspace: str | None, limit: int, cursor: str | None,
    as_json: bool,
) -> None:
    """Sessions, newest first."""
    with connect() as client:
        page = client.list_sessions(
            tool_id=tool_id,
            session_type=session_type,
            status=cast("SessionStatus", status),  # click.Choice allows no other
            workspace=workspace,
            limit=limit,
            cursor=cursor,
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


@click.group()
def session() -> None:
    """Bind a session to a process from a shell hook."""


@session.command("start")
@click.option("--tool", "tool_id", required=True, help="The tool's id, e.g. claude-code.")
@click.option("--pid", type=int, help="Owner process (any of yours). Default: this command's parent (your shell).")
@click.option("--type", "session_type", default="default", show_default=True)
@click.option("--tool-version")
@click.option("--workspace", help="Default: the owner's working directory.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata; repeatable.")
@json_option
@fail_cleanly
def session_start(
    tool_id: str, pid: int | None, session_type: str, tool_version: str | None, workspace: str | None,
    meta: tuple[str, ...], as_json: bool,
) -> None:
    """Print the id of the live session for TOOL and PID, creating it if needed."""
    metadata = parse_metadata(meta)
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


@click.group()
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
                (p.project_id, p.name, p.vcs, p.session_count, p.live_sessions, p.memory_count,
                 when(p.last_activity), p.root)
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
