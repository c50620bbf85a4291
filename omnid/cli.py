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
    if st.set_aside:
        lines.append(("set aside", f"{', '.join(st.set_aside)} (corrupt database found at start; kept, a new one is in use)"))
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
    """Explicit clean-ups; omnid never deletes anything on its own except expired memories."""


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
