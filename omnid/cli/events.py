"""``omnid events``: follow the daemon's events, one line each (JSON Lines with --json), like ``journalctl -f``."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click
import msgspec

from omnid_client.protocol import EVENT_KINDS, Event

from ._output import connect, fail_cleanly, json_option, short

_KIND_CHOICES = sorted(set(EVENT_KINDS) | {k.split(".")[0] for k in EVENT_KINDS})


def describe(event: Event) -> str:
    """One line for a person: sequence, local time, kind, tool, session, then the details."""
    at = datetime.fromtimestamp(event.at).astimezone().strftime("%H:%M:%S")
    session = (event.session_id or "-")[:8]
    details = " ".join(f"{k}={short(v, 40)}" for k, v in event.data.items() if v is not None and k != "contents")
    line = f"{event.seq:>8} {at} {event.kind:<16} {event.tool_id or '-':<14} {session:<8} {details}"
    return line.rstrip()


@click.command("events")
@click.option("--since", type=click.IntRange(0), help="First replay the kept events after this sequence number.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(_KIND_CHOICES),
              help="Only these kinds (a group such as 'session' means all its kinds); repeatable.")
@click.option("--tool", "tools", multiple=True, help="Only events of sessions of this tool; repeatable.")
@click.option("--project", "projects", multiple=True, help="Only events of this project (prj_…); repeatable.")
@click.option("--session", "sessions", multiple=True, help="Only events of this session; repeatable.")
@click.option("--content", is_flag=True, help="Include message contents (--json only).")
@click.option("-n", "--count", type=click.IntRange(1), help="Exit after this many events.")
@json_option
@fail_cleanly
def events(
    since: int | None,
    kinds: tuple[str, ...],
    tools: tuple[str, ...],
    projects: tuple[str, ...],
    sessions: tuple[str, ...],
    content: bool,
    count: int | None,
    as_json: bool,
) -> None:
    """Print each event as the daemon commits it, until interrupted (or --count). If the
    daemon restarts, the stream picks up where it left off."""
    encoder = msgspec.json.Encoder()
    stream = connect(autostart=False).events(
        kinds=kinds, tools=tools, projects=projects, sessions=sessions, since=since, include_content=content
    )
    printed = 0
    out: Any = sys.stdout
    try:
        for event in stream:
            if as_json:
                out.write(encoder.encode(event).decode() + "\n")
            else:
                out.write(describe(event) + "\n")
            out.flush()  # a shipper or a pipe sees each event as it happens
            printed += 1
            if count is not None and printed >= count:
                break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): nothing more to say
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
