"""Process identity: (pid, start time since boot, boot id), which survives PID reuse and
wall-clock changes, where a bare pid or a wall-clock create time does not."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass

import psutil

from omnid_client.errors import Invalid, NotFound, PermissionDenied

LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    pid: int
    start: int
    """Linux: clock ticks after boot (field 22 of /proc/PID/stat); elsewhere: the
    kernel's recorded start time in microseconds, which clock adjustments do not move."""
    boot_id: str


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    identity: ProcessIdentity
    uid: int


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
        return ProcessInfo(ProcessIdentity(pid, 0, boot_id()), -1)


def _inspect_linux(pid: int) -> ProcessInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        uid = os.stat(f"/proc/{pid}").st_uid  # the effective uid (root for non-dumpable processes)
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return ProcessInfo(ProcessIdentity(pid, int(fields[19]), boot_id()), uid)


def _real_uid(pid: int) -> int:
    try:
        return psutil.Process(pid).uids().real
    except psutil.Error:
        return -1


def is_alive(identity: ProcessIdentity) -> tuple[bool, str]:
    """Whether that very process still runs, and if not, why we know. A process omnid may
    not inspect counts as alive ("cannot inspect"): only idle expiry ends its sessions."""
    if identity.boot_id != boot_id():
        return False, "machine rebooted"
    info = inspect(identity.pid)
    if info is None:
        return False, "process exited"
    if info.uid == -1 and info.identity.start == 0:
        return True, "cannot inspect"  # it runs, but whether it is that process cannot be told
    if info.identity.start != identity.start:
        return False, "pid reused by another process"
    return True, "running"


def owner_process(pid: int, caller_uid: int, known: ProcessInfo | None = None) -> ProcessInfo:
    """The process a session may be bound to, or the typed error saying why not.
    ``known``: what the reaper already knows of a watched, still running ``pid``."""
    if isinstance(pid, bool) or not 1 <= pid <= pid_max():
        raise Invalid(f"pid {pid} is out of range: must be between 1 and {pid_max()}", {"field": "pid"})
    info = known or inspect(pid)
    if info is None:
        raise NotFound(f"no running process has pid {pid}", {"field": "pid"})
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
