"""Commands about what sessions hold: project memories, context, messages, tasks, and search."""

from __future__ import annotations

import json
from typing import Any, Sequence, cast

import click

from omnid_client.protocol import SearchKind, TaskStatus

from ._output import (
    ago,
    connect,
    fail_cleanly,
    json_option,
    parse_metadata,
    print_fields,
    print_json,
    print_table,
    project_options,
    short,
    when,
)
from ._vector_input import read_vector


@click.group()
def memories() -> None:
    """Project memories: versioned key/value notes, optionally expiring."""


def print_memories(items: Sequence[Any]) -> None:
    if not items:
        click.echo("no memories")
        return
    print_table(
        ["KEY", "VERSION", "READS", "LAST READ", "EXPIRES", "VALUE"],
        [
            (m.key, m.version, m.accessed_count, ago(m.last_accessed), ago(m.expires_at), short(m.value))
            for m in items
        ],
    )


@memories.command("list")
@project_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@fail_cleanly
def memories_list(project_id: str | None, workspace: str | None, limit: int, as_json: bool) -> None:
    """Live memories, most recently read first."""
    with connect(autostart=False) as client:
        items = client.list_memories(project_id=project_id, workspace=workspace, limit=limit)
    print_json(items) if as_json else print_memories(items)


@memories.command("get")
@click.argument("key")
@project_options
@json_option
@fail_cleanly
def memories_get(key: str, project_id: str | None, workspace: str | None, as_json: bool) -> None:
    """Print a memory's value (a read: it counts as an access)."""
    with connect(autostart=False) as client:
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
@click.option("--embedding", metavar="FILE", help="Its embedding: a JSON array of numbers in FILE (- for stdin).")
@json_option
@fail_cleanly
def memories_put(
    key: str, value: Any, project_id: str | None, workspace: str | None, json_value: bool, ttl: float | None,
    meta: tuple[str, ...], embedding: str | None, as_json: bool,
) -> None:
    """Store VALUE under KEY; an earlier value is kept in the history (its embedding is not)."""
    vector = read_vector(embedding, "--embedding") if embedding is not None else None
    if json_value:
        try:
            value = json.loads(value)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="VALUE") from None
    with connect() as client:
        m = client.put_memory(
            key, value, project_id=project_id, workspace=workspace, metadata=parse_metadata(meta), ttl=ttl,
            embedding=vector,
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
def memories_delete(key: str, project_id: str | None, workspace: str | None, as_json: bool) -> None:
    """Delete a memory and its history."""
    with connect() as client:
        result = client.delete_memory(key, project_id=project_id, workspace=workspace)
    print_json(result) if as_json else click.echo(f"deleted {key}")


@memories.command("history")
@click.argument("key")
@project_options
@json_option
@fail_cleanly
def memories_history(key: str, project_id: str | None, workspace: str | None, as_json: bool) -> None:
    """Every version of a memory, oldest first."""
    with connect(autostart=False) as client:
        h = client.memory_history(key, project_id=project_id, workspace=workspace)
    if as_json:
        print_json(h)
        return
    print_table(
        ["VERSION", "WRITTEN", "EXPIRES", "VALUE"],
        [(v.version, ago(v.created_at), ago(v.expires_at), short(v.value)) for v in h.versions],
    )


class _ShowByDefault(click.Group):
    """A group whose first argument, when it names no subcommand, is the ``show``
    command's: ``omnid context SESSION_ID`` keeps working beside ``omnid context pack``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ShowByDefault)
def context() -> None:
    """A session's context (``omnid context SESSION_ID``), or a pack of it for an agent."""


@context.command("show")
@click.argument("session_id")
@json_option
@fail_cleanly
def context_show(session_id: str, as_json: bool) -> None:
    """A session's context: files, searches, decisions, memories, changes."""
    with connect(autostart=False) as client:
        ctx = client.get_context(session_id)
    if as_json:
        print_json(ctx)
        return
    folded = f", {ctx.size.folded} of them folded into per-file/per-query totals" if ctx.size.folded else ""
    capped = " (lists capped)" if ctx.size.truncated else ""
    click.echo(f"{ctx.size.events} event(s){folded}, {ctx.size.bytes} bytes{capped}")
    sections: list[tuple[str, list[str], list[tuple[Any, ...]]]] = [
        (
            "files",
            ["IMPORTANCE", "READS", "LAST", "PATH"],
            [(f"{f.importance:.2f}", f.accesses, ago(f.last_access), f.path) for f in ctx.files],
        ),
        (
            "changes",
            ["CHANGE", "TIMES", "LAST", "PATH"],
            [(c.change, c.changes, ago(c.at), c.path) for c in ctx.changes],
        ),
        ("searches", ["AT", "QUERY"], [(ago(s.at), s.query) for s in ctx.searches]),
        ("decisions", ["AT", "DECISION"], [(ago(d.at), d.text) for d in ctx.decisions]),
        ("memories", ["AT", "SOURCE", "REF"], [(ago(m.at), m.source, m.ref) for m in ctx.memories]),
    ]
    for title, headers, rows in sections:
        if rows:
            click.echo(f"\n{title}:")
            print_table(headers, rows)


@context.command("pack")
@click.option("--session", "session_id", help="Session id. Default: the project's most recently active session.")
@project_options
@click.option("--budget", "budget_tokens", type=click.IntRange(0, 10_000_000), default=2000, show_default=True,
              help="Most tokens (estimated as UTF-8 bytes / 4, rounded up).")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print the Markdown (the default).")
@json_option
@fail_cleanly
def context_pack(
    session_id: str | None, project_id: str | None, workspace: str | None, budget_tokens: int, as_markdown: bool,
    as_json: bool,
) -> None:
    """The most useful context that fits the budget, ready to give an agent."""
    if as_markdown and as_json:
        raise click.UsageError("choose one of --markdown and --json")
    with connect(autostart=False) as client:
        pack = client.pack_context(session_id, project_id=project_id, workspace=workspace, budget_tokens=budget_tokens)
    if as_json:
        print_json(pack)
    elif pack.markdown:
        click.echo(pack.markdown, nl=False)


@click.group()
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
    with connect(autostart=False) as client:
        page = client.list_messages(session_id, limit=limit, after_seq=after_seq)
    if as_json:
        print_json(page)
        return
    if not page.messages:
        click.echo("no messages")
    for m in page.messages:
        click.echo(f"#{m.seq} {when(m.created_at)} {m.role} ({m.tokens_used} tokens): {short(m.content, 200)}")
    if page.next_after_seq is not None:
        click.echo(f"more: --after {page.next_after_seq}", err=True)


@click.group()
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
def tasks_list(
    session_id: str | None, status: str | None, external_id: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """Tasks, newest first."""
    with connect(autostart=False) as client:
        page = client.list_tasks(
            session_id=session_id,
            status=cast("TaskStatus | None", status),  # click.Choice allows no other
            external_id=external_id,
            limit=limit,
            cursor=cursor,
        )
    if as_json:
        print_json(page)
        return
    if not page.tasks:
        click.echo("no tasks")
    else:
        print_table(
            ["TASK", "STATUS", "SESSION", "EXTERNAL ID", "STEPS", "UPDATED", "TITLE"],
            [
                (t.task_id, t.status, t.session_id, t.external_id, t.interaction_count,
                 ago(t.updated_at), short(t.title))
                for t in page.tasks
            ],
        )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@tasks.command("show")
@click.argument("task_id")
@json_option
@fail_cleanly
def tasks_show(task_id: str, as_json: bool) -> None:
    """A task with its interactions."""
    with connect(autostart=False) as client:
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
        click.echo(f"  {when(i.created_at)} {i.kind}: {short(i.content, 200)}")


@click.command()
@click.argument("query")
@click.option("--project", "project_id")
@click.option("--session", "session_id")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["message", "memory", "session_memory", "decision"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
@fail_cleanly
def search(
    query: str, project_id: str | None, session_id: str | None, kinds: tuple[str, ...], limit: int, as_json: bool
) -> None:
    """Full-text search over messages, memories and decisions, best match first."""
    with connect(autostart=False) as client:
        hits = client.search(
            query,
            project_id=project_id,
            session_id=session_id,
            kinds=cast("list[SearchKind]", list(kinds)) or None,  # click.Choice allows no other
            limit=limit,
        )
    if as_json:
        print_json(hits)
        return
    if not hits:
        click.echo("no matches")
        return
    print_table(
        ["KIND", "REF", "SESSION", "WHEN", "MATCH"],
        [(h.kind, h.ref_id, h.session_id, ago(h.created_at), h.snippet) for h in hits],
    )
