"""Running the installed code: import all of it at start, notice when the installed package
changes, and re-exec into the new one handing over the instance lock and the listening
socket, so that no client finds the daemon missing in between.

New code that imports but fails before it is ready must not leave nothing running: once
ready, a daemon keeps a copy of the code it runs (``SNAPSHOT``, in its state dir), and
the re-exec starts the new code under a small trial (``TRIAL``) that holds on to the lock
and the socket; if the new code ends before it said ready, the trial execs the copy of the
old code instead, which says why in its log and status and keeps watching the installed
package for a fixed one."""

from __future__ import annotations

import fcntl
import importlib
import importlib.machinery
import importlib.metadata
import logging
import os
import pkgutil
import shutil
import socket
import sys
import tempfile
import types
from pathlib import Path

import omnid
import omnid_client

log = logging.getLogger("omnid.upgrade")

HANDOVER_ENV = "OMNID_HANDOVER"
FAILED_ENV = "OMNID_UPGRADE_FAILED"
"""Set by the trial for the old code it falls back to: why the new code did not start."""
PREFLIGHT = "import omnid.upgrade as u; u.import_everything(); print(u.installed_version())"
"""Run by ``python -c`` on a newly installed package: ``omnid.upgrade`` is the name every
daemon, old or new, imports, so upgrades and downgrades across layouts both work."""

Fingerprint = tuple[tuple[object, ...], ...]
FileStamp = list[tuple[str, int, int]]
"""(path, size, mtime) of each file of the running packages."""

SNAPSHOT = "code"
"""The state dir's copy of the code the daemon runs, with ``SNAPSHOT_MARK`` in it."""
SNAPSHOT_MARK = "omnid-snapshot"
PACKAGES = ("omnid", "omnid_client")

TRIAL = r"""
import os, runpy, sys, traceback
snapshot, argv = sys.argv[1], sys.argv[2:]
env = dict(os.environ)
fields = dict(p.partition("=")[::2] for p in env.get("OMNID_HANDOVER", "").split(","))
held = {fd: os.dup(fd) for fd in {3, int(fields.get("lock_fd", 3))}}  # whatever the new code closes
ready_r, ready_w = os.pipe()
sys.argv = ["omnid", *argv[3:], "--ready-fd", str(ready_w)]
status, crash = 1, ""
try:
    runpy.run_module("omnid", run_name="__main__", alter_sys=True)
    status = 0
except SystemExit as e:
    status = e.code if isinstance(e.code, int) else 1
except BaseException as e:
    crash = "".join(traceback.format_exception_only(type(e), e)).strip()
    traceback.print_exc()
os.set_blocking(ready_r, False)
try:
    said = os.read(ready_r, 65536).decode(errors="replace").strip()
except OSError:
    said = ""
if said.startswith("ready"):
    sys.exit(status)
for fd, copy in held.items():
    os.dup2(copy, fd)
reason = said.split(" ", 1)[1] if said.startswith("error ") else crash or f"it exited with status {status}"
env["OMNID_UPGRADE_FAILED"] = reason.splitlines()[-1] if reason else "?"
sys.stdout.flush()
sys.stderr.flush()
os.execve(sys.executable, [sys.executable, "-c", FALLBACK, snapshot, *argv], env)
"""
"""Run ``omnid serve`` of the installed code; if it ends before it is ready, exec the old
code in ``snapshot`` with the lock and socket as they were handed over.
argv: snapshot dir, then the restart argv (``python -m omnid serve ...``)."""
FALLBACK = r"""
import runpy, sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["omnid", *sys.argv[5:]]
runpy.run_module("omnid", run_name="__main__", alter_sys=True)
"""
TRIAL = TRIAL.replace("FALLBACK", repr(FALLBACK))


def running_dirs() -> list[Path]:
    """The directories of the packages this process imported: omnid and the shared protocol."""
    return [Path(omnid.__file__).parent, Path(omnid_client.__file__).parent]


def running_snapshot() -> Path | None:
    """The snapshot this process runs from (after a failed upgrade), or None."""
    root = running_dirs()[0].parent
    return root if (root / SNAPSHOT_MARK).exists() else None


def package_dirs() -> list[Path]:
    """The directories of every installed package the daemon runs: omnid and the shared
    protocol (the installed ones, not the snapshot, when running from a snapshot)."""
    running = running_dirs()
    snapshot = running_snapshot()
    if snapshot is None:
        return running
    search = [p for p in sys.path if os.path.abspath(p or ".") != str(snapshot)]
    found = []
    for name, fallback in zip(PACKAGES, running, strict=True):
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        found.append(Path(spec.origin).parent if spec is not None and spec.origin else fallback)
    return found


def keep_snapshot(state_dir: Path, imported: FileStamp) -> Path | None:
    """Copy the running packages to ``state_dir``/``SNAPSHOT`` (replacing an older copy
    unless it is of these very files), for a failed upgrade to fall back to; the copy in
    use when running from one. ``imported``: ``files_stamp()`` from before the packages
    were imported; None if the files changed since (no faithful copy can be made).
    Blocking file work: run it off the event loop."""
    current = running_snapshot()
    if current is not None:
        return current
    target = state_dir / SNAPSHOT
    stamp = repr(imported)
    try:
        if (target / SNAPSHOT_MARK).read_text() == stamp:
            return target
    except (OSError, UnicodeDecodeError):
        pass
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".code-", dir=state_dir))
        try:
            for name, top in zip(PACKAGES, running_dirs(), strict=True):
                shutil.copytree(top, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
            (tmp / SNAPSHOT_MARK).write_text(stamp)
            if files_stamp() != imported:
                log.info("the installed package changed since it was imported: no copy kept of the running code")
                shutil.rmtree(tmp, ignore_errors=True)
                return None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=".code-old-", dir=state_dir))
                os.replace(target, old / SNAPSHOT)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        log.warning(
            "cannot keep a copy of the running code in %s (%s): a failed upgrade would stop the daemon", target, e
        )
        return None
    return target


def files_stamp() -> FileStamp:
    """(path, size, mtime) of every file of the running packages: whether a copy is current."""
    found = []
    for top in running_dirs():
        for path in sorted(top.rglob("*")):
            if "__pycache__" not in path.parts and path.is_file():
                st = path.stat()
                found.append((str(path), st.st_size, st.st_mtime_ns))
    return found


def take_failure() -> str | None:
    """Why the upgraded code did not start, when this process is the old code it fell back to."""
    return os.environ.pop(FAILED_ENV, None)


# What runs in the CLI process (click, the MCP SDK, the HTTP compat server): the daemon
# never imports it, so an optional extra stays optional and the daemon starts lean.
NOT_DAEMON = frozenset({"omnid.cli", "omnid.offline", "omnid.mcp", "omnid.compat", "omnid.__main__"})


def import_everything() -> list[str]:
    """Import every module the daemon runs now, so that a package replaced on disk later
    cannot leave a running daemon half old and half new (or failing to import)."""
    names = []
    for info in pkgutil.iter_modules(omnid.__path__, "omnid."):
        if info.name in NOT_DAEMON:
            continue
        names.append(info.name)
        module = importlib.import_module(info.name)
        if info.ispkg:
            names += _import_all(module)
    names += _import_all(omnid_client)
    return names


def _import_all(package: types.ModuleType) -> list[str]:
    names = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def installed_version() -> str:
    """The version written in the package on disk now (which an upgrade may have changed)."""
    init = package_dirs()[0] / "__init__.py"
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
    if not located.exists() or not located.samefile(package_dirs()[0] / "__init__.py"):
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


def exec_handover(
    lock_fd: int, listener: socket.socket, socket_owner: str, argv: list[str], snapshot: Path | None = None
) -> None:
    """Replace this process with ``argv`` (same pid), passing the held instance lock and the
    listening socket: the socket as systemd passes one (fd 3, LISTEN_FDS), the lock's fd and
    who owns the socket file in OMNID_HANDOVER. With a ``snapshot`` of the running code,
    ``argv`` runs under ``TRIAL``, which falls back to it. Never returns."""
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
    if snapshot is not None and argv[1:3] == ["-m", "omnid"]:
        argv = [sys.executable, "-c", TRIAL, str(snapshot), *argv]
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
