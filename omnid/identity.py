"""Process identity: (pid, start time since boot, boot id), which survives PID reuse and
wall-clock changes, where a bare pid or a wall-clock create time does not.

Where the kernel gives every process a unique pidfd inode (Linux 6.9+, pidfs), that inode
is recorded too: it tells apart two processes that got the same pid within one start-time
tick (10 ms), which start times cannot."""

from __future__ import annotations

import errno
import functools
import os
import select
import subprocess
import sys
from dataclasses import dataclass, field

import psutil

from omnid_client.errors import Invalid, NotFound, PermissionDenied

LINUX = sys.platform.startswith("linux")

_own_pid = os.getpid()
"""This process's pid, renewed in a forked child: ``owner_process`` runs on every
get_or_create and find, and ``os.getpid()`` is a system call each time."""


def _renew_own_pid() -> None:
    global _own_pid
    _own_pid = os.getpid()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_renew_own_pid)


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    pid: int
    start: int
    """Linux: clock ticks after boot (field 22 of /proc/PID/stat); elsewhere: the
    kernel's recorded start time in microseconds, which clock adjustments do not move."""
    boot_id: str
    ino: int | None = field(default=None, compare=False)
    """The process's pidfd inode where it is unique (``pidfd_inodes_unique``), else None.
    Not part of equality or hashing (sessions recorded before it was kept have none):
    compare with ``same_process``."""


def same_process(recorded: ProcessIdentity, current: ProcessIdentity) -> bool:
    """Whether ``current`` (as seen now) is the process ``recorded`` names: the same pid,
    start and boot, and the same pidfd inode where both are known."""
    return recorded == current and (recorded.ino is None or current.ino is None or recorded.ino == current.ino)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    identity: ProcessIdentity
    uid: int
    kernel: bool = False
    """A kernel thread (or kthreadd itself): never a session's owner."""
    inspectable: bool = True
    """False where the OS denied a look (psutil's AccessDenied, not on Linux): it runs,
    but its start time and uid are unknown (``start`` 0, ``uid`` -1)."""


PF_KTHREAD = 0x00200000
"""The ``flags`` bit of /proc/PID/stat (field 9) that marks a kernel thread."""


BOOT_ID_FILE_ENV = "OMNID_BOOT_ID_FILE"
"""Test seam: the path of a file whose text stands in for the kernel's boot id, so a test
can simulate a reboot by changing it between two daemon runs. Not for real use."""


@functools.cache
def boot_id() -> str:
    seam = os.environ.get(BOOT_ID_FILE_ENV)
    if seam:
        return _boot_id_from(seam)
    if LINUX:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "kern.bootsessionuuid"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return f"boot-{int(psutil.boot_time())}"


def _boot_id_from(path: str) -> str:
    """The first line of ``path``, opened without following a link or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RuntimeError(f"{BOOT_ID_FILE_ENV}={path}: {e.strerror}") from None
    try:
        text = os.read(fd, 256).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not text:
        raise RuntimeError(f"{BOOT_ID_FILE_ENV}={path}: the file is empty")
    return text


@functools.cache
def pid_max() -> int:
    if LINUX:
        try:
            with open("/proc/sys/kernel/pid_max") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 4194304
    return 99998 if sys.platform == "darwin" else 2**31 - 1


@functools.cache
def pidfd_inodes_unique() -> bool:
    """Whether a pidfd's inode identifies its process for the life of the boot: true on
    Linux 6.9+ (pidfs); before, every pidfd shares one anonymous inode."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        mine, other = pidfd_inode(os.getpid()), pidfd_inode(os.getppid() or 1)
    except OSError:
        return False
    return mine is not None and other is not None and mine != other


def pidfd_inode(pid: int) -> int | None:
    """The inode of a pidfd for ``pid`` (None if it has exited)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def inspect(pid: int) -> ProcessInfo | None:
    """The identity and real uid of a running process; None if none runs (zombies are dead)."""
    if LINUX:
        return _inspect_linux(pid)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        start = int(round(proc.create_time() * 1_000_000))
        return ProcessInfo(ProcessIdentity(pid, start, boot_id()), proc.uids().real)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return ProcessInfo(ProcessIdentity(pid, 0, boot_id()), -1, inspectable=False)


def _inspect_linux(pid: int) -> ProcessInfo | None:
    pidfd = -1
    if pidfd_inodes_unique():
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError:  # out of file descriptors: the start time alone has to do
            pidfd = -1
    try:
        try:
            read = _read_proc(pid)
        except OSError as e:
            if pidfd < 0 or e.errno != errno.EMFILE:
                raise
            # The pidfd took the last descriptor: /proc needs it more, and the start time alone has to do.
            os.close(pidfd)
            pidfd = -1
            read = _read_proc(pid)
        if read is None:
            return None
        stat, uid = read
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            return None
        kernel = bool(int(fields[6]) & PF_KTHREAD) or pid == 2 or fields[1] == b"2"
        ino = None
        if pidfd >= 0:
            # The pidfd was opened before /proc was read: while its process has not
            # exited, the pid is still its own, so /proc showed that very process.
            if select.select([pidfd], [], [], 0)[0]:
                return None
            ino = os.fstat(pidfd).st_ino
        return ProcessInfo(ProcessIdentity(pid, int(fields[19]), boot_id(), ino), uid, kernel)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _read_proc(pid: int) -> tuple[bytes, int] | None:
    """/proc/PID/stat and the process's effective uid (root for non-dumpable processes); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat, os.stat(f"/proc/{pid}").st_uid
    except (FileNotFoundError, ProcessLookupError):
        return None


def _real_uid(pid: int) -> int | None:
    """None once the process is gone (or cannot be inspected): no caller's uid."""
    try:
        return psutil.Process(pid).uids().real
    except psutil.Error:
        return None


GONE = frozenset({"no owner process", "process exited", "machine rebooted", "pid reused by another process"})
"""The causes ``is_alive`` (and an import) give for an owner that no longer runs."""


def is_alive(identity: ProcessIdentity) -> tuple[bool, str]:
    """Whether that very process still runs, and if not, why we know. A process omnid may
    not inspect counts as alive ("cannot inspect"): only idle expiry ends its sessions."""
    if identity.boot_id != boot_id():
        return False, "machine rebooted"
    info = inspect(identity.pid)
    if info is None:
        return False, "process exited"
    if not info.inspectable:
        return True, "cannot inspect"  # it runs, but whether it is that process cannot be told
    if not same_process(identity, info.identity):
        return False, "pid reused by another process"
    return True, "running"


def owner_process(pid: int, caller_uid: int, known: ProcessInfo | None = None) -> ProcessInfo:
    """The process a session may be bound to, or the typed error saying why not.
    ``known``: what the reaper already knows of a watched, still running ``pid``."""
    if isinstance(pid, bool) or not 1 <= pid <= pid_max():
        raise Invalid(f"pid {pid} is out of range: must be between 1 and {pid_max()}", {"field": "pid"})
    if pid == _own_pid:
        raise Invalid(f"pid {pid} is the omnid daemon itself, which cannot own a session", {"field": "pid"})
    if pid == 1:
        raise PermissionDenied(
            "pid 1 is the init process, which never exits: a session bound to it would never end", {"field": "pid"}
        )
    info = known or inspect(pid)
    if info is None:
        raise NotFound(f"no running process has pid {pid}", {"field": "pid"})
    if info.kernel:
        raise PermissionDenied(
            f"process {pid} is a kernel thread, which no tool runs in: it cannot own a session", {"field": "pid"}
        )
    if info.uid != caller_uid and _real_uid(pid) != caller_uid:
        raise PermissionDenied(
            f"process {pid} belongs to uid {info.uid}, not to the caller (uid {caller_uid})", {"field": "pid"}
        )
    return info


def check_ancestor(pid: int, caller_pid: int) -> None:
    """PermissionDenied unless ``pid`` is the caller or one of its ancestors (parent,
    grandparent, ...), as they are now."""
    if pid == caller_pid:
        return
    try:
        ancestors = [p.pid for p in psutil.Process(caller_pid).parents()]
    except psutil.Error:
        ancestors = []
    if pid not in ancestors:
        raise PermissionDenied(
            f"process {pid} is neither the caller (pid {caller_pid}) nor one of its ancestors",
            {"field": "pid", "ancestors": ancestors[:16]},
        )


def cwd_of(pid: int) -> str | None:
    try:
        return psutil.Process(pid).cwd() or None
    except (psutil.Error, OSError):
        return None
