"""The ``omnid`` click group gathering the command modules, each a thin shell over one client call."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from . import _style, checkpoints, compat, content, daemon, data, events, hooks, ops, sessions, similar  # noqa: F401  (similar adds to memories)
from .exits import EXIT_INTERRUPTED, epilog
from .top import top


class OmnidGroup(click.Group):
    """Ctrl-C ends any command with exit status 130 and no traceback (click's own says
    "Aborted!" and exits 1, like any error)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=OmnidGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=epilog())
@click.version_option(__version__, prog_name="omnid")
@click.option("--no-color", is_flag=True, help="No colour even on a terminal (as a non-empty NO_COLOR does).")
def main(no_color: bool) -> None:
    """omnid: one local daemon that tells every AI tool process which session it is in."""
    if no_color:
        _style.no_color = True


for command in (
    daemon.serve, daemon.status, daemon.reap, daemon.stop, daemon.stats, daemon.metrics, daemon.config, daemon.service,
    sessions.sessions, sessions.session, sessions.projects,
    content.memories, content.context, content.messages, content.tasks, content.search, checkpoints.checkpoint,
    events.events, top,
    data.backup, data.export_command, data.import_command, data.import_omnimemory, data.retention, data.cleanup,
    hooks.init, hooks.hook, hooks.shell, hooks.mcp,
    compat.compat,
    ops.doctor, ops.logs, ops.completion, ops.schema,
):
    main.add_command(command)
ops.add_completions(main)
