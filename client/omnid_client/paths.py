"""Where omnid keeps its socket, lock, database, status file and logs.

Every location derives from the uid and the account's home directory (never from
per-process variables such as TMPDIR or XDG_*), so a login shell, a tmux server, a cron
job and a service manager all agree. ``OMNID_HOME`` moves everything under one
directory; ``OMNID_SOCKET`` overrides the socket alone.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

SOCKET_NAME = "omnid.sock"
LAUNCHD_LABEL = "dev.omnid.daemon"
MAX_SOCKET_PATH = 104 if sys.platform == "darwin" else 108
_SYSTEM_TMP = Path("/private/tmp" if sys.platform == "darwin" else "/tmp")


class PathError(Exception):
    """A location omnid cannot use safely; the message names the path and the way out."""


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    socket: Path
    socket_source: str

    @property
    def runtime_dir(self) -> Path:
        return self.socket.parent

    @property
    def database(self) -> Path:
        return self.state_dir / "omnid.db"

    @property
    def lock(self) -> Path:
        return self.state_dir / "omnid.lock"

    @property
    def spawn_lock(self) -> Path:
        return self.state_dir / "spawn.lock"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def log(self) -> Path:
        return self.state_dir / "omnid.log"


def _account_home() -> Path:
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return Path.home()


def default_state_dir() -> Path:
    home = os.environ.get("OMNID_HOME")
    if home:
        return Path(home).absolute()
    if sys.platform == "darwin":
        return _account_home() / "Library" / "Application Support" / "omnid"
    return _account_home() / ".local" / "state" / "omnid"


def systemd_socket_path() -> Path:
    """Where the systemd user unit's ``RuntimeDirectory=omnid`` puts the socket."""
    return Path(f"/run/user/{os.getuid()}/omnid") / SOCKET_NAME


def fallback_socket_path() -> Path:
    """A private per-uid directory in the fixed system temp directory."""
    return _SYSTEM_TMP / f"omnid-{os.getuid()}" / SOCKET_NAME


def daemon_paths() -> Paths:
    """The locations a daemon started now binds and writes."""
    state = default_state_dir()
    if os.environ.get("OMNID_SOCKET"):
        return Paths(state, Path(os.environ["OMNID_SOCKET"]).absolute(), "OMNID_SOCKET")
    if os.environ.get("OMNID_HOME"):
        return Paths(state, state / "run" / SOCKET_NAME, "OMNID_HOME")
    if sys.platform == "darwin":
        sock = state / SOCKET_NAME
        if len(os.fsencode(sock)) < MAX_SOCKET_PATH:
            return Paths(state, sock, "home")
    return Paths(state, fallback_socket_path(), "fallback")


def read_status_file(state_dir: Path | None = None) -> dict:
    """The daemon's last published status (pid, version, socket), or {} if none."""
    path = (state_dir or default_state_dir()) / "status.json"
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def socket_candidates() -> list[tuple[Path, str]]:
    """Socket paths a client tries, in order, each with how it was chosen."""
    if os.environ.get("OMNID_SOCKET"):
        return [(Path(os.environ["OMNID_SOCKET"]).absolute(), "OMNID_SOCKET")]
    paths = daemon_paths()
    if os.environ.get("OMNID_HOME"):
        return [(paths.socket, paths.socket_source)]
    found: list[tuple[Path, str]] = []
    published = read_status_file(paths.state_dir).get("socket")
    if isinstance(published, str) and published:
        found.append((Path(published), "status file"))
    if sys.platform.startswith("linux"):
        found.append((systemd_socket_path(), "systemd"))
    found.append((paths.socket, paths.socket_source))
    unique: dict[Path, str] = {}
    for path, source in found:
        unique.setdefault(path, source)
    return list(unique.items())


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) >= MAX_SOCKET_PATH:
        raise PathError(
            f"socket path {str(path)!r} is {len(os.fsencode(path))} bytes; the OS limit is "
            f"{MAX_SOCKET_PATH - 1}. Set OMNID_SOCKET (or OMNID_HOME) to a shorter path."
        )


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700, or check an existing one is a real directory of ours, private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise PathError(f"cannot create {path}: {e.strerror}") from e
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PathError(f"{path} must be a directory, not a symlink or file; remove it or set OMNID_HOME")
    if st.st_uid != os.getuid():
        raise PathError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
            "remove it or set OMNID_HOME"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
