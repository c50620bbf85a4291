"""Who is on the other end of a loopback TCP connection, from the kernel's socket table.

Loopback TCP is reachable by every local user, so a compat server must check each
connection's owner. Linux lists every TCP socket of the network namespace in
``/proc/net/tcp`` (IPv4) with its owner's uid and inode: the peer's socket is the row whose
local address is our connection's remote end and whose remote address is our end."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

TCP_TABLE = "/proc/net/tcp"
ESTABLISHED = "01"


@dataclass(frozen=True, slots=True)
class Peer:
    uid: int
    inode: int


def supported() -> bool:
    """Whether this system lets a server tell a loopback peer's uid (Linux with /proc)."""
    return sys.platform.startswith("linux") and os.access(TCP_TABLE, os.R_OK)


def _hex_address(address: tuple[str, int]) -> str:
    """An IPv4 (host, port) as /proc/net/tcp writes it: the address in host byte order."""
    packed = socket.inet_aton(address[0])
    return f"{int.from_bytes(packed, sys.byteorder):08X}:{address[1]:04X}"


def peer(conn: socket.socket) -> Peer | None:
    """The uid and socket inode of the process at the other end of ``conn`` (an accepted
    IPv4 connection), or None when the table has no such socket (it has closed already)."""
    ours = _hex_address(conn.getsockname())
    theirs = _hex_address(conn.getpeername())
    with open(TCP_TABLE, "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 10 or fields[1].decode() != theirs or fields[2].decode() != ours:
                continue
            if fields[3].decode() != ESTABLISHED:
                continue
            return Peer(int(fields[7]), int(fields[9]))
    return None


def pid_of(inode: int) -> int | None:
    """A process of this user holding the socket with ``inode`` (found through its open
    file descriptors), or None."""
    target = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) == target:
                    return int(entry.name)
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return None
