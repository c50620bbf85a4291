"""Where omnid keeps its socket, lock, database, status file and logs.

Every location derives from the uid and the account's home directory (never from
per-process variables such as TMPDIR or XDG_*), so a login shell, a tmux server, a cron
job and a service manager all agree. ``OMNID_HOME`` moves everything under one
directory; ``OMNID_SOCKET`` overrides the socket alone.
"""

from __future__ import annotations

import json
import os
import plistlib
import secrets
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import pwd
except ImportError:  # Windows: no accounts database (and no Unix sockets: see _core.HAVE_UNIX_SOCKETS)
    pwd = None  # type: ignore[assignment]

SOCKET_NAME = "omnid.sock"
SYSTEMD_UNITS = ("omnid.socket", "omnid.service")
LAUNCHD_LABEL = "dev.omnid.daemon"
LAUNCHD_SOCKET_KEY = "omnid"
"""The LaunchAgent's socket, by its name under the plist's ``Sockets`` key."""
SERVICE_ENV = ("OMNID_HOME", "OMNID_SOCKET")
"""The variables a service unit carries over from the shell that installed it."""
MAX_SOCKET_PATH = 104 if sys.platform == "darwin" else 108
_SYSTEM_TMP = Path("/private/tmp" if sys.platform == "darwin" else "/tmp")
SHORT_DIR_PREFIX = "omnid-"
"""A short socket directory is this prefix and an unguessable name in the system temp dir."""


class PathError(Exception):
    """A location omnid cannot use safely; the message names the path and the way out."""


class UntrustedPath(PathError):
    """A location another user owns or could redirect (a symlink, a foreign owner)."""


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    socket: Path
    socket_source: str

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
    except (KeyError, AttributeError):
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


def user_runtime_dir() -> Path | None:
    """``/run/user/<uid>`` (computed from the uid, as logind makes it: never from
    ``XDG_RUNTIME_DIR``) when it is this user's own private directory; else None."""
    if not sys.platform.startswith("linux"):
        return None
    path = Path(f"/run/user/{os.getuid()}")
    return path if _private_dir_of_ours(path) else None


def _private_dir_of_ours(path: Path) -> bool:
    """A real directory (not a symlink) this uid owns that nobody else can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _fits(sock: Path) -> bool:
    return len(os.fsencode(sock)) < MAX_SOCKET_PATH


def short_socket_dir(state_dir: Path) -> Path:
    """For a state directory too deep for a socket: the short private directory the daemon
    recorded in its status file, while it is still ours and private; else a new unguessable
    name in the system temp directory, which the daemon that binds it creates (0700). Never
    a predictable name there: another user could create it first."""
    published = read_status_file(state_dir).get("socket")
    if isinstance(published, str) and published:
        directory = Path(published).parent
        if (
            directory.parent == _SYSTEM_TMP
            and directory.name.startswith(SHORT_DIR_PREFIX)
            and _private_dir_of_ours(directory)
        ):
            return directory
    return _SYSTEM_TMP / f"{SHORT_DIR_PREFIX}{secrets.token_hex(8)}"


def daemon_paths() -> Paths:
    """The locations a daemon started now binds and writes. The socket goes where no other
    user can create names: ``/run/user/<uid>/omnid`` when that is the user's own private
    runtime dir, else ``run/`` in the state dir (a short private dir if that is too long)."""
    state = default_state_dir()
    if os.environ.get("OMNID_SOCKET"):
        return Paths(state, Path(os.environ["OMNID_SOCKET"]).absolute(), "OMNID_SOCKET")
    if os.environ.get("OMNID_HOME"):
        sock, source = state / "run" / SOCKET_NAME, "OMNID_HOME"
    elif (runtime := user_runtime_dir()) is not None:
        return Paths(state, runtime / "omnid" / SOCKET_NAME, "runtime dir")
    elif sys.platform == "darwin":
        sock, source = state / SOCKET_NAME, "home"
    else:
        sock, source = state / "run" / SOCKET_NAME, "state dir"
    if _fits(sock):
        return Paths(state, sock, source)
    return Paths(state, short_socket_dir(state) / SOCKET_NAME, "short dir")


def read_status_file(state_dir: Path | None = None) -> dict[str, Any]:
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
    if not _fits(path):
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
        raise UntrustedPath(f"{path} must be a directory, not a symlink or file; remove it or set OMNID_HOME")
    if st.st_uid != os.getuid():
        raise UntrustedPath(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
            "remove it or set OMNID_HOME"
        )
    if st.st_mode & stat.S_ISVTX and st.st_mode & 0o022:
        # A shared directory like /tmp (a root daemon owns it): never made private for us.
        raise UntrustedPath(
            f"{path} is a shared directory (sticky, writable by others); "
            "set OMNID_SOCKET or OMNID_HOME to a directory of your own"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


# --- service manager units ----------------------------------------------------------


def systemd_unit_dir() -> Path:
    """Where ``systemctl --user`` looks for the user's own units."""
    config = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config) if config and os.path.isabs(config) else Path.home() / ".config"
    return base / "systemd" / "user"


def launchd_plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


@dataclass(frozen=True)
class InstalledService:
    """An omnid unit the service manager can start for this process's environment."""

    manager: str
    start_command: tuple[str, ...]
    socket: Path


def service_environment() -> dict[str, str]:
    """The omnid variables of this process (as absolute paths) that an installed unit must match."""
    return {name: os.path.abspath(os.environ[name]) for name in SERVICE_ENV if os.environ.get(name)}


def installed_service() -> InstalledService | None:
    """The installed unit (systemd) or LaunchAgent (launchd) that serves this process's
    daemon location, or None: a unit installed for another OMNID_HOME does not count."""
    if sys.platform.startswith("linux"):
        unit = systemd_unit_dir() / "omnid.service"
        env = _unit_environment(unit)
        if env is None or env != service_environment():
            return None
        socket = daemon_paths().socket if env else systemd_socket_path()
        return InstalledService("systemd", ("systemctl", "--user", "start", *SYSTEMD_UNITS), socket)
    if sys.platform == "darwin":
        env = _plist_environment(launchd_plist_path())
        if env is None or env != service_environment():
            return None
        return InstalledService(
            "launchd", ("launchctl", "kickstart", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"), daemon_paths().socket
        )
    return None


def _unit_environment(unit: Path) -> dict[str, str] | None:
    """The omnid variables set by a unit file's ``Environment=`` lines; None if no such file."""
    try:
        text = unit.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.strip() != "Environment":
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        for word in words:
            name, eq, val = word.partition("=")
            if eq and name in SERVICE_ENV and val:
                env[name] = val.replace("%%", "%")
    return env


def _plist_environment(plist: Path) -> dict[str, str] | None:
    try:
        with open(plist, "rb") as f:
            data = plistlib.load(f)
    except (OSError, plistlib.InvalidFileException, ValueError):
        return None
    env = data.get("EnvironmentVariables") if isinstance(data, dict) else None
    if not isinstance(env, dict):
        return {}
    return {k: v for k, v in env.items() if k in SERVICE_ENV and isinstance(v, str) and v}
