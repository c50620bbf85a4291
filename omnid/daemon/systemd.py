"""Speaking systemd's daemon protocols: notifications to $NOTIFY_SOCKET (READY, STOPPING,
WATCHDOG) and listening sockets passed in by socket activation (LISTEN_FDS)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("omnid.systemd")

LISTEN_FDS_START = 3


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. "READY=1") to the service manager; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        log.debug("unsupported NOTIFY_SOCKET %r", address)
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(fields).encode(), address)
        except OSError as e:
            log.warning("cannot notify the service manager at %s: %s", os.environ["NOTIFY_SOCKET"], e)
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None if no watchdog is on for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


def listen_fds() -> list[int]:
    """File descriptors passed by socket activation, if they are meant for this process.

    Like ``sd_listen_fds(1)``: the LISTEN_* variables are removed so that children do not
    take the sockets for theirs, and the descriptors are made close-on-exec.
    """
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + max(n, 0)))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            return []
    return fds


def adopt_listener(fd: int) -> socket.socket:
    """The listening Unix stream socket on ``fd``; ValueError saying why if it is not one."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ValueError(f"inherited file descriptor {fd} is not a socket: {e.strerror}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ValueError(f"inherited socket {fd} is not a Unix stream socket (ListenStream= must be a path)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ValueError(f"inherited socket {fd} is not listening")
    name = sock.getsockname()
    if not isinstance(name, str) or not name or name.startswith("\0"):
        sock.detach()
        raise ValueError(f"inherited socket {fd} has no file system path")
    return sock


def journal_stream() -> bool:
    """Whether stderr is connected to the journal (JOURNAL_STREAM names our stderr)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def started_by_systemd() -> bool:
    return "INVOCATION_ID" in os.environ or journal_stream()
