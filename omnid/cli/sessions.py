"""Commands about sessions, binding one to a shell, and the projects sessions belong to."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence, cast

import click
import msgspec

from omnid_client.protocol import Session, SessionOwner, SessionStatus

from . import fast
from ._output import (
    ago,
    connect,
    duration,
    fail_cleanly,
    json_option,
    parse_metadata,
    print_fields,
    print_json,
    print_table,
    project_options,
    status_cell,
    when,
)


@click.group()
def sessions() -> None:
    """List, show and end sessions."""


def flags(s: Session) -> str | None:
    return ",".join(name for name, on in (("pinned", s.pinned), ("archived", s.archived_at is not None)) if on) or None


def print_sessions(sessions: Sequence[Session]) -> None:
    if not sessions:
        click.echo("no sessions")
        return
    now = time.time()
    print_table(
        ["SESSION", "TOOL", "PID", "TYPE", "STATUS", "STARTED", "LAST ACTIVE", "DURATION", "WORKSPACE", "FLAGS",
         "TAGS", "TITLE"],
        [
            (s.session_id, s.tool_id, s.owner_pid, s.session_type, status_cell(s.end_reason or "live"),
             ago(s.started_at, now), ago(s.last_activity, now), duration((s.ended_at or now) - s.started_at),
             s.workspace, flags(s), ",".join(s.tags) or None, s.title)
            for s in sessions
        ],
    )


def owner_span(o: SessionOwner) -> str:
    held = f"{when(o.since)} to {when(o.until)}, {o.released}" if o.until is not None else f"since {when(o.since)}"
    return f"pid {o.pid} (start {o.start}; {held})"


def print_session(s: Session, owners: Sequence[SessionOwner] = ()) -> None:
    fields = [
        ("session", s.session_id),
        ("title", s.title),
        ("tool", f"{s.tool_id} {s.tool_version or ''}".strip()),
        ("type", s.session_type),
        ("status", "live" if s.ended_at is None else s.end_reason),
        ("owner", f"pid {s.owner_pid} (start {s.owner_start}, boot {s.boot_id})" if s.owner_pid else None),
        ("owners", "; ".join(owner_span(o) for o in owners) if len(owners) > 1 else None),
        ("resume key", s.resume_key),
        ("workspace", s.workspace),
        ("started", when(s.started_at)),
        ("last active", when(s.last_activity)),
        ("ended", when(s.ended_at) if s.ended_at else None),
        ("duration", duration(s.ended_at - s.started_at) if s.ended_at else None),
        ("tags", ", ".join(s.tags) or None),
        ("pinned", "yes" if s.pinned else None),
        ("archived", when(s.archived_at) if s.archived_at is not None else None),
        ("metadata", json.dumps(s.metadata, sort_keys=True) if s.metadata else None),
        ("project", s.project_id),
        ("messages", f"{s.message_count} ({s.total_tokens} tokens, ${s.total_cost:.6f})" if s.message_count else None),
        ("counters", counters_text(s.metadata.get("counters"))),
    ]
    print_fields(fields)


def counters_text(counters: object) -> str | None:
    """A session's ``metadata["counters"]`` (e.g. OmniMemory's tokens_saved) as one line."""
    if not isinstance(counters, dict) or not counters:
        return None
    return ", ".join(f"{k} {v}" for k, v in counters.items())


@sessions.command("list")
@click.option("--tool", "tool_id", help="Only this tool's sessions.")
@click.option("--type", "session_type", help="Only sessions of this type.")
@click.option("--status", type=click.Choice(["live", "ended", "all"]), default="all", show_default=True)
@click.option("--workspace", help="Only sessions in this workspace path.")
@click.option("--project", "project_id", help="Only sessions of this project (prj_…).")
@click.option("--tag", help="Only sessions with this tag.")
@click.option("--pinned", is_flag=True, help="Only pinned sessions.")
@click.option("--archived", "only_archived", is_flag=True, help="Only archived sessions (hidden otherwise).")
@click.option("--all", "with_archived", is_flag=True, help="Archived sessions too.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@json_option
@fail_cleanly
def sessions_list(
    tool_id: str | None, session_type: str | None, status: str, workspace: str | None, project_id: str | None,
    tag: str | None, pinned: bool, only_archived: bool, with_archived: bool, limit: int, cursor: str | None,
    as_json: bool,
) -> None:
    """Sessions, newest first; archived ones only with --archived or --all."""
    if only_archived and with_archived:
        raise click.UsageError("--archived and --all exclude each other")
    with connect(autostart=False) as client:
        page = client.list_sessions(
            tool_id=tool_id,
            session_type=session_type,
            status=cast("SessionStatus", status),  # click.Choice allows no other
            workspace=workspace,
            limit=limit,
            cursor=cursor,
            tag=tag,
            archived="only" if only_archived else "include" if with_archived else "exclude",
            pinned=True if pinned else None,
            project_id=project_id,
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
    """One session in full, with every process that owned it."""
    with connect(autostart=False) as client:
        session = client.get(session_id)
        owners = client.session_owners(session_id).owners
    if as_json:
        print_json({**msgspec.structs.asdict(session), "owners": owners})
    else:
        print_session(session, owners)


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
    with connect(autostart=False) as client:
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
    """Bind a session to a process from a shell hook; edit or delete one session."""


@session.command("start")
@click.option("--tool", "tool_id", required=True, help="The tool's id, e.g. claude-code.")
@click.option("--pid", type=int, help="Owner process (any of yours). Default: this command's parent (your shell).")
@click.option("--type", "session_type", default="default", show_default=True)
@click.option("--tool-version")
@click.option("--workspace", help="Default: the owner's working directory.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata; repeatable.")
@click.option("--resume-key", help="Continue the tool's session with this key if its owner is gone (see README).")
@click.option("--resume-ended", is_flag=True, help="With --resume-key: resume it even if it was ended explicitly.")
@click.option("--track", is_flag=True, help="Record file changes under the project root while it is live (see README).")
@json_option
@fail_cleanly
def session_start(
    tool_id: str, pid: int | None, session_type: str, tool_version: str | None, workspace: str | None,
    meta: tuple[str, ...], resume_key: str | None, resume_ended: bool, track: bool, as_json: bool,
) -> None:
    """Print the id of the live session for TOOL and PID, creating (or resuming) it if needed."""
    fast.session_start(
        tool_id, pid, session_type, tool_version, workspace, parse_metadata(meta), as_json,
        resume_key=resume_key, resume_ended=resume_ended, track_workspace=track,
    )


@session.command("find")
@click.option("--tool", "tool_id", required=True)
@click.option("--pid", type=int, help="Default: this command's parent (your shell).")
@click.option("--resume-key", help="The session `session start --resume-key` would return or resume.")
@click.option("--resume-ended", is_flag=True, help="With --resume-key: count explicitly ended sessions too.")
@json_option
@fail_cleanly
def session_find(tool_id: str, pid: int | None, resume_key: str | None, resume_ended: bool, as_json: bool) -> None:
    """Print the live session id for TOOL and PID; exit 1 if there is none. Never creates."""
    with connect(autostart=False) as client:
        found = client.find(
            tool_id, pid=pid if pid is not None else os.getppid(), resume_key=resume_key, resume_ended=resume_ended
        )
    if as_json:
        print_json({"session": found})
    elif found is not None:
        click.echo(found.session_id)
    if found is None:
        sys.exit(1)


@session.command("update")
@click.argument("session_id")
@click.option("--title", help="A title; the empty string removes it.")
@click.option("--tag", "add_tags", multiple=True, help="Add this tag; repeatable.")
@click.option("--untag", "remove_tags", multiple=True, help="Remove this tag; repeatable.")
@click.option("--clear-tags", is_flag=True, help="Remove every tag first (then --tag adds).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Set a metadata key; repeatable.")
@click.option("--unset-meta", multiple=True, metavar="KEY", help="Remove a metadata key; repeatable.")
@click.option("--replace-meta", is_flag=True, help="Replace the metadata with the --meta pairs.")
@json_option
@fail_cleanly
def session_update(
    session_id: str, title: str | None, add_tags: tuple[str, ...], remove_tags: tuple[str, ...], clear_tags: bool,
    meta: tuple[str, ...], unset_meta: tuple[str, ...], replace_meta: bool, as_json: bool,
) -> None:
    """Change a session's title, tags or metadata (live or ended)."""
    if replace_meta and unset_meta:
        raise click.UsageError("--replace-meta and --unset-meta exclude each other")
    patch: dict[str, object] = {key: None for key in unset_meta}
    patch.update(parse_metadata(meta))
    with connect() as client:
        updated = client.update_session(
            session_id, title=title, tags=[] if clear_tags else None, add_tags=list(add_tags),
            remove_tags=list(remove_tags), metadata=patch if patch or replace_meta else None,
            replace_metadata=replace_meta,
        )
    print_json(updated) if as_json else print_session(updated)


def flag_command(name: str, done: str, help: str, *, pinned: bool | None, archived: bool | None) -> click.Command:
    """``session NAME SESSION_ID``: set one of a session's flags (None: the other)."""

    @json_option
    @fail_cleanly
    def command(session_id: str, as_json: bool) -> None:
        with connect() as client:
            updated = client.update_session(session_id, pinned=pinned, archived=archived)
        print_json(updated) if as_json else click.echo(f"{updated.session_id} {done}")

    command.__doc__ = help
    return click.command(name)(click.argument("session_id")(command))


for name, done, pinned, archived, help in (
    ("pin", "pinned", True, None, "Pin (star) a session: `sessions list --pinned` lists the pinned ones."),
    ("unpin", "unpinned", False, None, "Unpin a session."),
    ("archive", "archived", None, True, "Archive a session: `sessions list` shows it only if asked."),
    ("unarchive", "unarchived", None, False, "Bring an archived session back into `sessions list`."),
):
    session.add_command(flag_command(name, done, help, pinned=pinned, archived=archived))
session.add_command(session.commands["pin"], "star")
session.add_command(session.commands["unpin"], "unstar")


@session.command("delete")
@click.argument("session_id")
@click.option("--yes", is_flag=True, help="Really delete it, with everything it holds.")
@click.option("--force", is_flag=True, help="Delete it even if it is live.")
@json_option
@fail_cleanly
def session_delete(session_id: str, yes: bool, force: bool, as_json: bool) -> None:
    """Delete one session and everything it holds (context, messages, memories, tasks), for good."""
    if not yes:
        raise click.UsageError(
            "deleting a session cannot be undone: pass --yes (`omnid export --session ID` first keeps a copy)"
        )
    with connect() as client:
        deleted = client.delete_session(session_id, force=force)
    if as_json:
        print_json(deleted)
        return
    click.echo(
        f"deleted {deleted.session_id}{' (it was live)' if deleted.was_live else ''}: {deleted.messages} message(s), "
        f"{deleted.context_events} context event(s), {deleted.session_memories} session memory(ies), "
        f"{deleted.tasks} task(s)"
    )


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
    with connect(autostart=False) as client:
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
                 ago(p.last_activity), p.root)
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
    with connect(autostart=False) as client:
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
