"""Drop-in front ends for clients of the services omnid replaces (off unless run)."""

from __future__ import annotations

import logging
import sys

import click


@click.group()
def compat() -> None:
    """Serve another service's API from omnid, for clients that cannot change."""


@compat.command("omnimemory")
@click.option("--port", type=click.IntRange(0, 65535), default=8003, show_default=True,
              help="OmniMemory's metrics service port, which its MCP server calls (0: any free port).")
@click.option("--insecure-any-local-user", is_flag=True,
              help="Serve without checking which user each connection comes from (systems without "
                   "/proc/net/tcp, e.g. macOS): every local user could then read and write your sessions.")
@click.option("-v", "--verbose", is_flag=True, help="Log every request to stderr.")
def compat_omnimemory(port: int, insecure_any_local_user: bool, verbose: bool) -> None:
    """Serve OmniMemory's session HTTP API on 127.0.0.1:PORT, backed by the omnid daemon,
    so an unmodified OmniMemory MCP server keeps working. Runs in the foreground; stop
    OmniMemory's metrics service first. Connections from other users are refused."""
    from ..compat import omnimemory_http, peers

    check = not insecure_any_local_user
    if check and not peers.supported():
        raise click.UsageError(
            "this system does not show which user a loopback connection comes from (no readable "
            "/proc/net/tcp), so any local user could use this server; pass --insecure-any-local-user "
            "to serve anyway"
        )
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.WARNING,
                        format="omnid compat: %(message)s")
    try:
        server = omnimemory_http.make_server(port, check_peers=check)
    except OSError as e:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
    click.echo(f"omnid compat omnimemory: serving OmniMemory's API on http://127.0.0.1:{server.server_port}"
               f"{'' if check else ' (any local user)'}", err=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
