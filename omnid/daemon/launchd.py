"""Taking the listening socket launchd holds for the LaunchAgent (its ``Sockets`` key), on
macOS only, through ``launch_activate_socket(3)`` in libSystem, called with ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import sys

from omnid_client.paths import LAUNCHD_LABEL, LAUNCHD_SOCKET_KEY

log = logging.getLogger("omnid.launchd")

def started_by_launchd() -> bool:
    """launchd names the job it started in XPC_SERVICE_NAME."""
    return os.environ.get("XPC_SERVICE_NAME") == LAUNCHD_LABEL


def listen_fds(platform: str = sys.platform) -> list[int]:
    """The descriptors launchd passes for ``LAUNCHD_SOCKET_KEY`` (made close-on-exec); [] when not on
    macOS, not started by launchd, or the plist has no such socket."""
    if platform != "darwin" or not started_by_launchd():
        return []
    return activate_socket(LAUNCHD_SOCKET_KEY)


def activate_socket(name: str) -> list[int]:  # pragma: no cover - needs macOS's libSystem
    """``launch_activate_socket(name, &fds, &count)``: launchd's listening sockets by name."""
    libc = ctypes.CDLL(ctypes.util.find_library("System") or "/usr/lib/libSystem.B.dylib", use_errno=True)
    activate = libc.launch_activate_socket
    activate.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int)), ctypes.POINTER(ctypes.c_size_t)]
    activate.restype = ctypes.c_int
    fds_p = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = activate(name.encode(), ctypes.byref(fds_p), ctypes.byref(count))
    if err != 0:
        # ESRCH: not launchd's job; ENOENT: no socket of that name; EALREADY: taken before.
        if err not in (errno.ESRCH, errno.ENOENT):
            log.warning("launch_activate_socket(%r) failed: %s", name, os.strerror(err))
        return []
    try:
        fds = [fds_p[i] for i in range(count.value)]
    finally:
        libc.free(fds_p)
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds
