"""The ``omnid`` click group gathering the command modules, each a thin shell over one client call."""

from __future__ import annotations

import click

from .. import __version__
from . import checkpoints, compat, content, daemon, data, events, hooks, sessions, similar  # noqa: F401  (similar adds to memories)
from .top import top


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnid")
def main() -> None:
    """omnid: one local daemon that tells every AI tool process which session it is in."""


for command in (
    daemon.serve, daemon.status, daemon.reap, daemon.stop, daemon.stats, daemon.metrics, daemon.config, daemon.service,
    sessions.sessions, sessions.session, sessions.projects,
    content.memories, content.context, content.messages, content.tasks, content.search, checkpoints.checkpoint,
    events.events, top,
    data.backup, data.export_command, data.import_command, data.import_omnimemory, data.retention, data.cleanup,
    hooks.init, hooks.hook, hooks.shell, hooks.mcp,
    compat.compat,
):
    main.add_command(command)
