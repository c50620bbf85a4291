"""``omnid checkpoint``: save a session's context as a project memory, and restore it."""

from __future__ import annotations

import os

import click

from ._output import (
    ago,
    connect,
    fail_cleanly,
    json_option,
    print_fields,
    print_json,
    print_table,
    project_options,
    when,
)

PREFIX = "checkpoint/"


def _key(ref: str) -> str:
    """A checkpoint key from ``checkpoint/SESSION/NAME`` or ``SESSION/NAME``."""
    return ref if ref.startswith(PREFIX) else PREFIX + ref


@click.group()
def checkpoint() -> None:
    """Checkpoints: a session's context saved as the project memory checkpoint/SESSION/NAME."""


@checkpoint.command("create")
@click.argument("session_id")
@click.argument("name")
@click.option("--note", help="A line saying what the checkpoint is for.")
@json_option
@fail_cleanly
def checkpoint_create(session_id: str, name: str, note: str | None, as_json: bool) -> None:
    """Save SESSION_ID's context, counters and title/goal/summary as checkpoint NAME."""
    with connect() as client:
        cp = client.create_checkpoint(session_id, name, note=note)
    if as_json:
        print_json(cp.info)
    else:
        click.echo(f"{cp.info.key} (version {cp.info.version})")


@checkpoint.command("list")
@click.option("--session", "session_id", help="Only this session's checkpoints.")
@project_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@fail_cleanly
def checkpoint_list(
    session_id: str | None, project_id: str | None, workspace: str | None, limit: int, as_json: bool
) -> None:
    """Checkpoints of a session or of the project (default: the current directory's), newest first."""
    with connect(autostart=False) as client:
        items = client.list_checkpoints(session_id, project_id=project_id, workspace=workspace, limit=limit)
    if as_json:
        print_json(items)
    elif not items:
        click.echo("no checkpoints")
    else:
        print_table(
            ["KEY", "VERSION", "SAVED", "NOTE"], [(c.key, c.version, ago(c.created_at), c.note or "") for c in items]
        )


@checkpoint.command("show")
@click.argument("ref", metavar="[checkpoint/]SESSION/NAME")
@click.option("--version", type=click.IntRange(min=1), help="An earlier version.")
@project_options
@json_option
@fail_cleanly
def checkpoint_show(
    ref: str, version: int | None, project_id: str | None, workspace: str | None, as_json: bool
) -> None:
    """One checkpoint: what it holds."""
    with connect(autostart=False) as client:
        cp = client.show_checkpoint(_key(ref), project_id=project_id, workspace=workspace, version=version)
    if as_json:
        print_json(cp)
        return
    snap = cp.snapshot
    counters = snap.get("counters", {})
    context = snap.get("context", {})
    print_fields([
        ("key", cp.info.key), ("version", cp.info.version), ("saved", when(cp.info.created_at)),
        ("note", cp.info.note),
        ("title", snap.get("title")), ("goal", snap.get("goal")), ("summary", snap.get("summary")),
        ("messages", counters.get("messages")), ("events", counters.get("context_events")),
        ("files", len(context.get("files", []))), ("decisions", len(context.get("decisions", []))),
        ("searches", len(context.get("searches", []))),
    ])


@checkpoint.command("restore")
@click.argument("ref", metavar="[checkpoint/]SESSION/NAME")
@click.option("--into", "into", help="A live session to seed. Default: a new session.")
@click.option("--tool", "tool_id", default="omnid", show_default=True, help="The new session's tool.")
@click.option("--pid", type=int, help="The new session's owner. Default: this command's parent (your shell).")
@click.option("--version", type=click.IntRange(min=1), help="An earlier version.")
@project_options
@json_option
@fail_cleanly
def checkpoint_restore(
    ref: str, into: str | None, tool_id: str, pid: int | None, version: int | None, project_id: str | None,
    workspace: str | None, as_json: bool,
) -> None:
    """Seed a session's context from a checkpoint; prints the session's id."""
    with connect() as client:
        restored = client.restore_checkpoint(
            _key(ref), into=into, project_id=project_id, workspace=workspace, version=version, tool_id=tool_id,
            pid=pid if pid is not None or into is not None else os.getppid(),
            owner_must_be_ancestor=pid is None and into is None,
        )
    if as_json:
        print_json(restored)
    else:
        click.echo(restored.session_id)
