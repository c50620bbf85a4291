"""Opening and writing files without following planted links: ``open_private`` for
omnid's own files (lock, log, database, status file, archive), ``atomic_write`` for every
file omnid writes whole (exports, backups, unit files, the status file)."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_KINDS = [
    (stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
]


class UnsafePath(OSError):
    """A path that is not a regular file of this user where one is expected; the message
    says what is there and what to do."""


def os_message(e: OSError) -> str:
    """What went wrong, for an error line that already names the file."""
    return e.strerror if e.strerror and not isinstance(e, UnsafePath) else str(e)


def kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def check_file(st: os.stat_result, path: os.PathLike | str, *, owned: bool = True) -> None:
    """UnsafePath unless ``st`` is a regular file (owned by this user when ``owned``)."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symlink; omnid does not follow links here (remove it, or name the file itself)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{path} is {kind(st.st_mode)}, not a regular file; omnid uses only regular files here")
    if owned and st.st_uid != os.getuid():
        raise UnsafePath(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); omnid refuses to use it (remove it)"
        )


def check_existing(path: os.PathLike | str, *, owned: bool = True) -> bool:
    """True if ``path`` exists as a regular file (of this user when ``owned``), False if it
    does not exist; UnsafePath for a symlink or anything else there. Never follows links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    check_file(st, path, owned=owned)
    return True


def directory_problem(path: os.PathLike | str) -> str | None:
    """Why ``path`` cannot be used as a directory, to follow its name in a sentence (None:
    it is one). Never follows a link."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot be used: {os_message(e)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"is {kind(st.st_mode)}, not a directory (a link is not followed: name the directory)"
    return None


def open_private(path: os.PathLike | str, flags: int, mode: int = 0o600, *, owned: bool = True) -> int:
    """``os.open`` that never follows a symlink at ``path``, never blocks on a FIFO or device,
    and returns only a descriptor of a regular file (owned by this user when ``owned``)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        try:
            st = os.lstat(path)
        except OSError:
            raise e from None
        check_file(st, path, owned=owned)  # say what is there (a symlink: ELOOP; a FIFO: ENXIO)
        raise
    try:
        check_file(os.fstat(fd), path, owned=owned)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class PendingFile:
    """The temporary file ``atomic_write`` fills: ``file`` to write through, or ``path``
    for a library that opens it by name (the name is unguessable, the file already exists)."""

    def __init__(self, path: Path, file: BinaryIO):
        self.path = path
        self.file = file


@contextlib.contextmanager
def atomic_write(
    dest: os.PathLike | str, *, mode: int = 0o600, overwrite: bool = True, owned: bool = False
) -> Iterator[PendingFile]:
    """Write ``dest`` whole or not at all: a new temporary file beside it, created with
    O_CREAT|O_EXCL|O_NOFOLLOW under an unguessable name, is synced and renamed over it (or
    linked to it when not ``overwrite``: FileExistsError if it exists). Refuses a ``dest``
    that exists and is not a regular file (a symlink, FIFO, device or directory), or with
    ``owned`` (omnid's own files) one of another user."""
    dest = Path(os.path.abspath(dest))
    exists = check_existing(dest, owned=owned)
    if exists and not overwrite:
        raise FileExistsError(f"{dest} exists")
    dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{dest.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        placed = False
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)  # the umask may have taken bits a unit file needs
                yield PendingFile(dest.parent / tmp, f)
                f.flush()
                os.fsync(f.fileno())
                mine = os.fstat(f.fileno())
            now = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                raise UnsafePath(
                    f"{dest.parent / tmp} was replaced while omnid wrote it; nothing was written to {dest}"
                )
            check_existing(dest, owned=owned)  # still no symlink, FIFO or directory there
            if overwrite:
                os.replace(tmp, dest.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                os.link(tmp, dest.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            placed = True
            os.fsync(dir_fd)
        finally:
            if not placed or not overwrite:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
