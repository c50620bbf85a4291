"""Whom a client talks to: only a daemon of the user's own (or root's), checked before a byte is sent.

The socket's directory must be one only the user (or root) can create names in, and the
process serving the socket must run as the user (or root), by the kernel's peer credentials:
what gpg-agent checks of its socket directory and OpenSSH of its peers. Anything else may be
another user's fake daemon."""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from pathlib import Path

from .errors import PermissionDenied

_FIX = (
    "Nothing was sent to it. Set OMNID_HOME (or OMNID_SOCKET) to a directory of your own, "
    "or ask an administrator to remove it."
)


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel: for a
    daemon the connecting client, for a client the process that made the socket listen."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return pid, uid
    # macOS/BSD: LOCAL_PEERCRED gives struct xucred {u_int version; uid_t uid; ...} (what
    # getpeereid reads), LOCAL_PEERPID the pid (SOL_LOCAL = 0).
    xucred = sock.getsockopt(0, 0x001, struct.calcsize("IIh16I"))
    uid = struct.unpack_from("II", xucred)[1]
    pid = struct.unpack("i", sock.getsockopt(0, 0x002, 4))[0]
    return pid, uid


def trusted_uid(uid: int) -> bool:
    return uid == os.getuid() or uid == 0


def check_socket_dir(path: Path) -> bool:
    """Whether the directory of socket ``path`` exists (False: nothing can be listening
    there); PermissionDenied if it is not safe: not a directory, or one another user owns
    or can create names in (group/world-writable, like a shared temp directory)."""
    directory = path.parent
    try:
        st = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise PermissionDenied(f"cannot check the socket directory {directory}: {e.strerror}. {_FIX}") from None
    me = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(f"the socket's directory {directory} is not a directory. {_FIX}")
    if not trusted_uid(st.st_uid):
        raise PermissionDenied(
            f"the socket directory {directory} belongs to uid {st.st_uid}, not to you (uid {me}): "
            f"a daemon there may be another user's fake. {_FIX}",
            {"path": str(directory), "owner": st.st_uid},
        )
    if st.st_mode & 0o022:
        raise PermissionDenied(
            f"the socket directory {directory} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"another user could have put a fake daemon's socket there. Run `chmod go-w {directory}` "
            f"if it is yours to keep, or set OMNID_HOME (or OMNID_SOCKET) to a private directory. Nothing was sent.",
            {"path": str(directory), "mode": stat.S_IMODE(st.st_mode)},
        )
    return True


def check_server(sock: socket.socket, path: Path) -> None:
    """PermissionDenied unless the process serving ``sock`` runs as this user or root."""
    try:
        pid, uid = peer_credentials(sock)
    except OSError as e:
        raise PermissionDenied(f"cannot tell which user serves {path} ({e.strerror}). {_FIX}") from None
    if not trusted_uid(uid):
        raise PermissionDenied(
            f"the process serving {path} (pid {pid}) runs as uid {uid}, not as you (uid {os.getuid()}) "
            f"or root: it is not your omnid. Nothing was sent to it. Stop that process or remove {path}, "
            "or set OMNID_SOCKET to your own daemon's socket.",
            {"path": str(path), "pid": pid, "uid": uid},
        )
