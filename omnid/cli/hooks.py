"""Commands that meet AI tools where they live: shell hook code (``init``), the commands it
runs (``shell``), agent hooks (``hook``) and the MCP server (``mcp``).

The hot ones run
click-free through ``fast``; these definitions give them their help and their errors."""

from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

import click

from ._output import fail_cleanly
from ._text import echo

F = TypeVar("F", bound=Callable[..., Any])


def agent_options(other: str) -> Callable[[F], F]:
    """--tool and --pid, which ``hook`` and ``mcp`` share: both act for the agent's session."""

    def add(fn: F) -> F:
        fn = click.option(
            "--pid", type=int, help="The agent process. Default: the first ancestor that is not a shell -c or launcher."
        )(fn)
        return click.option(
            "--tool", "tool_id", default="agent", show_default=True,
            help=f"Tool id of the agent's session (use the same for `omnid {other}`).",
        )(fn)

    return add


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def init(shell: str) -> None:
    """Print hook code that binds a session to each interactive shell.

    \b
    bash:  eval "$(omnid init bash)"     in ~/.bashrc
    zsh:   eval "$(omnid init zsh)"      in ~/.zshrc
    fish:  omnid init fish | source      in ~/.config/fish/config.fish

    Each shell gets one session (type "shell"; its name, tty, host and user in the
    metadata), exported as OMNID_SESSION_ID for the tools it runs. Each new working
    directory is recorded in its context; the session ends when the shell exits, or is
    reaped if the terminal is killed."""
    from ..offline.shells import init_script

    click.echo(init_script(shell), nl=False)


@click.command()
@agent_options(other="mcp")
def hook(tool_id: str, pid: int | None) -> None:
    """Record one agent hook event read as JSON on stdin.

    For agents with JSON hooks (Claude Code's SessionStart, UserPromptSubmit,
    PreToolUse/PostToolUse, Stop, SessionEnd): the event is recorded against the
    session of the agent process that ran the hook. Prompts become messages, files
    read or changed and searches become context, SessionEnd ends the session, and
    any other event is kept as a generic context event. Never prints on stdout, always
    exits 0, and gives up after 5 seconds."""
    from ..offline.hooks import run_hook

    sys.exit(run_hook(sys.stdin.buffer, tool_id, pid))


@click.group()
def shell() -> None:
    """What the code `omnid init` prints runs (not meant to be typed)."""


@shell.command("start")
@click.argument("shell_name", metavar="SHELL", type=click.Choice(["bash", "zsh", "fish"]))
@click.option("--pid", type=int, help="The shell's pid (an ancestor). Default: this command's parent.")
@fail_cleanly
def shell_start(shell_name: str, pid: int | None) -> None:
    """Print the id of the shell's session, creating it if needed."""
    from ..offline.shells import start

    echo(start(shell_name, pid))


@shell.command("cd")
@click.argument("session_id")
@click.argument("directory")
@fail_cleanly
def shell_cd(session_id: str, directory: str) -> None:
    """Record DIRECTORY as the shell's new working directory."""
    from ..offline.shells import record_cwd

    record_cwd(session_id, directory)


@shell.command("end")
@click.argument("session_id")
@fail_cleanly
def shell_end(session_id: str) -> None:
    """End the shell's session."""
    from ..offline.shells import end

    end(session_id)


@click.command()
@agent_options(other="hook")
def mcp(tool_id: str, pid: int | None) -> None:
    """Serve MCP over stdin/stdout for the agent that started this (needs `omnid[mcp]`).

    The agent gets one omnid session, created on first use and found again after a
    restart of this server; it ends when the agent exits. Tools and resources: see
    the README, or ask the server (tools/list)."""
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        raise click.ClickException("the MCP server needs the mcp package: pip install 'omnid[mcp]'")
    from ..mcp.server import serve

    serve(tool_id, pid)
