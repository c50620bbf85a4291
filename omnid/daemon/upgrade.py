"""Running the installed code: import all of it at start, notice when the installed package
changes, and re-exec into the new one handing over the instance lock and the listening
socket, so that no client finds the daemon missing in between."""

from __future__ import annotations

import fcntl
import importlib
import importlib.metadata
import logging
import os
import pkgutil
import socket
import sys
from pathlib import Path

import omnid_client

import omnid

log = logging.getLogger("omnid.upgrade")

HANDOVER_ENV = "OMNID_HANDOVER"
PREFLIGHT = "import omnid.upgrade as u; u.import_everything(); print(u.installed_version())"
"""Run by ``python -c`` on a newly installed package: ``omnid.upgrade`` is the name every
daemon, old or new, imports, so upgrades and downgrades across layouts both work."""

Fingerprint = tuple[tuple[object, ...], ...]


def package_dirs() -> list[Path]:
    """The directories of every package the daemon runs: omnid and the shared protocol."""
    return [Path(omnid.__file__).parent, Path(omnid_client.__file__).parent]


def import_everything() -> list[str]:
    """Import every module of the daemon now, so that a package replaced on disk later
    cannot leave a running daemon half old and half new (or failing to import)."""
    names = []
    for package in (omnid, omnid_client):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith(".__main__"):
                continue
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def installed_version() -> str:
    """The version written in the package on disk now (which an upgrade may have changed)."""
    init = Path(omnid.__file__)
    for line in init.read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def watch_dirs() -> list[Path]:
    """Directories whose entries change when the package is reinstalled or upgraded."""
    dirs: list[Path] = []
    for top in package_dirs():
        for parent in (top.parent, top):
            if parent not in dirs:
                dirs.append(parent)
        for sub in sorted(top.iterdir()):
            if sub.is_dir() and (sub / "__init__.py").exists() and sub not in dirs:
                dirs.append(sub)
    return dirs


def _installed_record() -> Path | None:
    """The RECORD of the distribution that installed the running package, if one did
    (an editable install or a checkout on PYTHONPATH has none that names its files)."""
    try:
        dist = importlib.metadata.distribution("omnid")
        located = Path(str(dist.locate_file("omnid/__init__.py")))
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        return None
    if not located.exists() or not located.samefile(omnid.__file__):
        return None
    for entry in dist.files or []:
        if entry.name == "RECORD" and entry.parent.name.endswith(".dist-info"):
            record = Path(str(dist.locate_file(entry)))
            return record if record.exists() else None
    return None


def fingerprint() -> Fingerprint:
    """The identity (inode, size, mtime) of what an install or upgrade rewrites: each
    package's ``__init__.py`` and the distribution's RECORD. Editing some other module
    of a checkout does not restart the daemon; reinstalling does."""
    paths = [top / "__init__.py" for top in package_dirs()]
    record = _installed_record()
    if record is not None:
        paths.append(record)
    entries: list[tuple[object, ...]] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            entries.append((str(path), None))
            continue
        entries.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(entries)


def exec_handover(lock_fd: int, listener: socket.socket, socket_owner: str, argv: list[str]) -> None:
    """Replace this process with ``argv`` (same pid), passing the held instance lock and the
    listening socket: the socket as systemd passes one (fd 3, LISTEN_FDS), the lock's fd and
    who owns the socket file in OMNID_HANDOVER. Never returns."""
    lock = fcntl.fcntl(lock_fd, fcntl.F_DUPFD, 10)
    os.set_inheritable(lock, True)
    sock_fd = listener.fileno()
    if sock_fd != 3:
        os.dup2(sock_fd, 3)
    os.set_inheritable(3, True)
    env = dict(os.environ)
    env.update(
        LISTEN_FDS="1",
        LISTEN_PID=str(os.getpid()),
        LISTEN_FDNAMES="omnid",
        **{HANDOVER_ENV: f"lock_fd={lock},socket={socket_owner}"},
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def take_handover() -> tuple[int, str] | None:
    """(lock fd, socket owner) passed by the daemon this process replaced, or None."""
    value = os.environ.pop(HANDOVER_ENV, None)
    if not value:
        return None
    fields = dict(part.partition("=")[::2] for part in value.split(","))
    try:
        lock_fd = int(fields["lock_fd"])
    except (KeyError, ValueError):
        return None
    os.set_inheritable(lock_fd, False)
    return lock_fd, fields.get("socket", "own")
