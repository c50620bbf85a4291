"""Installing omnid as a per-user service: socket-activated systemd user units on Linux, a
LaunchAgent on macOS, written with the absolute path of this interpreter."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import msgspec

from omnid_client.paths import (
    LAUNCHD_LABEL,
    LAUNCHD_SOCKET_KEY,
    MAX_SOCKET_PATH,
    SOCKET_NAME,
    SYSTEMD_UNITS,
    PathError,
    check_socket_path,
    ensure_private_dir,
    launchd_plist_path,
    service_environment,
    systemd_unit_dir,
)

from ..safefile import atomic_write, open_private, os_message

Manager = Literal["systemd", "launchd"]
COMMAND_TIMEOUT = 30.0
PLACEHOLDER_PYTHON = "/usr/bin/python3"
"""The interpreter named in the unit files shipped in the repository's systemd/ and launchd/."""


class ServiceError(Exception):
    """The service cannot be installed here; the message says why."""


class UnitFile(msgspec.Struct):
    path: str
    state: Literal["created", "updated", "unchanged", "removed", "absent", "installed", "differs"]


class CommandRun(msgspec.Struct):
    command: str
    exit_status: int | None
    """None when the command could not be run at all (see ``output``)."""
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Report(msgspec.Struct):
    manager: str
    action: str
    files: list[UnitFile]
    commands: list[CommandRun]
    ok: bool
    message: str


class ServiceFile(msgspec.Struct):
    """A file `omnid service install` would write (``omnid service show --json``)."""

    path: str
    content: str


class ServiceStatus(msgspec.Struct):
    manager: str
    installed: bool
    up_to_date: bool
    files: list[UnitFile]
    state: dict[str, str]
    """What the service manager says about each unit (enabled/active, or launchd's state)."""
    detail: str


def detect_manager() -> Manager:
    if sys.platform.startswith("linux"):
        return "systemd"
    if sys.platform == "darwin":
        return "launchd"
    raise ServiceError(f"omnid has no service manager integration for {sys.platform}; run `omnid serve` yourself")


# --- rendering -------------------------------------------------------------------------


def _specifiers(value: str) -> str:
    """Escape systemd's %-specifiers."""
    return value.replace("%", "%%")


def _exec_word(word: str) -> str:
    """One word of an ExecStart= command line, quoted when it needs to be."""
    word = _specifiers(word).replace("$", "$$")
    if word and not any(c in word for c in ' \t\n"\'\\;'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _assignment(name: str, value: str) -> str:
    """One NAME=VALUE of an Environment= line (no $-expansion there, unlike ExecStart=)."""
    word = _specifiers(f"{name}={value}")
    if not any(c in word for c in ' \t\n"\'\\;'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _listen_path(env: dict[str, str]) -> str:
    if env.get("OMNID_SOCKET"):
        return _specifiers(env["OMNID_SOCKET"])
    if env.get("OMNID_HOME"):
        return _specifiers(str(Path(env["OMNID_HOME"]) / "run" / SOCKET_NAME))
    return f"%t/omnid/{SOCKET_NAME}"


def render_systemd(python: str, env: dict[str, str]) -> dict[str, str]:
    """The text of omnid.socket and omnid.service."""
    socket_unit = f"""\
# Written by `omnid service install`, which names its own interpreter in ExecStart; rerun it rather than editing.
[Unit]
Description=omnid session daemon socket

[Socket]
ListenStream={_listen_path(env)}
SocketMode=0600
DirectoryMode=0700

[Install]
WantedBy=sockets.target
"""
    environment = "".join(
        f"Environment={_assignment(name, value)}\n" for name, value in sorted(env.items())
    )
    service_unit = f"""\
# Written by `omnid service install`, which names its own interpreter in ExecStart; rerun it rather than editing.
[Unit]
Description=omnid session daemon: which session each AI tool process is in
Requires=omnid.socket
After=omnid.socket

[Service]
Type=notify
ExecStart={" ".join(_exec_word(w) for w in (python, "-m", "omnid", "serve"))}
{environment}Restart=on-failure
RestartSec=2
WatchdogSec=60
TimeoutStopSec=20
RuntimeDirectory=omnid
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
UMask=0077

[Install]
WantedBy=default.target
Also=omnid.socket
"""
    return {"omnid.socket": socket_unit, "omnid.service": service_unit}


def launchd_state_dir(env: dict[str, str], home: Path) -> Path:
    if env.get("OMNID_HOME"):
        return Path(env["OMNID_HOME"])
    return home / "Library" / "Application Support" / "omnid"


def launchd_socket(env: dict[str, str], home: Path) -> Path:
    """Where the LaunchAgent's socket goes: where a client of this environment looks
    (omnid_client.paths.daemon_paths on macOS)."""
    if env.get("OMNID_SOCKET"):
        return Path(env["OMNID_SOCKET"])
    if env.get("OMNID_HOME"):
        return Path(env["OMNID_HOME"]) / "run" / SOCKET_NAME
    return launchd_state_dir(env, home) / SOCKET_NAME


def render_launchd(python: str, env: dict[str, str], home: Path) -> bytes:
    """The LaunchAgent property list: launchd holds the socket (``Sockets``, handed to the
    daemon by launch_activate_socket, see omnid/daemon/launchd.py) and starts omnid on login
    and on the first connection after it stopped."""
    state = launchd_state_dir(env, home)
    plist: dict = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [python, "-m", "omnid", "serve", "--log-file", str(state / "omnid.log")],
        "RunAtLoad": True,
        # Restart after a crash, not after `omnid stop` (a connection to the socket starts it again).
        "KeepAlive": {"SuccessfulExit": False},
        # Clients wait on its answers: never Background, which throttles CPU and I/O.
        "ProcessType": "Interactive",
        "StandardOutPath": str(state / "omnid.launchd.log"),
        "StandardErrorPath": str(state / "omnid.launchd.log"),
    }
    socket = launchd_socket(env, home)
    if len(os.fsencode(socket)) < MAX_SOCKET_PATH:  # else the daemon binds a short directory of its own
        plist["Sockets"] = {
            LAUNCHD_SOCKET_KEY: {
                "SockPathName": str(socket), "SockPathMode": 0o600, "SockType": "stream", "SockFamily": "Unix",
            }
        }
    if env:
        plist["EnvironmentVariables"] = dict(sorted(env.items()))
    return plistlib.dumps(plist, sort_keys=False)


def wanted_files(
    manager: Manager, *, python: str | None = None, env: dict[str, str] | None = None
) -> dict[Path, bytes]:
    """Each file ``install`` writes, with its content, for this interpreter and environment."""
    python = python or sys.executable
    env = service_environment() if env is None else env
    if env.get("OMNID_SOCKET") or env.get("OMNID_HOME"):
        socket = Path(env["OMNID_SOCKET"]) if env.get("OMNID_SOCKET") else Path(env["OMNID_HOME"]) / "run" / SOCKET_NAME
        try:
            check_socket_path(socket)
        except PathError as e:
            raise ServiceError(str(e)) from None
    if manager == "systemd":
        unit_dir = systemd_unit_dir()
        return {unit_dir / name: text.encode() for name, text in render_systemd(python, env).items()}
    return {launchd_plist_path(): render_launchd(python, env, Path.home())}


# --- service manager commands ------------------------------------------------------------


def _run(*argv: str) -> CommandRun:
    command = " ".join(argv)
    if shutil.which(argv[0]) is None:
        return CommandRun(command, None, f"{argv[0]} not found on PATH")
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError) as e:
        return CommandRun(command, None, str(e))
    return CommandRun(command, done.returncode, (done.stdout + done.stderr).strip())


def _launchd_target() -> str:
    return f"gui/{os.getuid()}/{LAUNCHD_LABEL}"


def _write(path: Path, content: bytes) -> Literal["created", "updated", "unchanged"]:
    try:
        try:
            with os.fdopen(open_private(path, os.O_RDONLY, owned=False), "rb") as f:
                old: bytes | None = f.read()
        except FileNotFoundError:
            old = None
        if old == content:
            return "unchanged"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, mode=0o644) as pending:
            pending.file.write(content)
    except OSError as e:
        raise ServiceError(f"cannot write {path}: {os_message(e)}") from None
    return "created" if old is None else "updated"


def install(manager: Manager, *, start: bool = True) -> Report:
    """Write the unit files (idempotent) and have the service manager enable them, and start
    them unless ``start`` is False."""
    files = [UnitFile(str(path), _write(path, content)) for path, content in wanted_files(manager).items()]
    changed = any(f.state != "unchanged" for f in files)
    commands: list[CommandRun] = []
    if manager == "systemd":
        commands.append(_run("systemctl", "--user", "daemon-reload"))
        if commands[-1].ok:
            if start:
                commands.append(_run("systemctl", "--user", "enable", "--now", *SYSTEMD_UNITS))
                if commands[-1].ok and changed:
                    commands.append(_run("systemctl", "--user", "try-restart", "omnid.service"))
            else:
                commands.append(_run("systemctl", "--user", "enable", *SYSTEMD_UNITS))
    else:
        ensure_private_dir(launchd_state_dir(service_environment(), Path.home()))
        ensure_private_dir(launchd_socket(service_environment(), Path.home()).parent)  # launchd binds, not mkdirs
        if start:
            loaded = _run("launchctl", "print", _launchd_target()).ok
            if loaded and changed:
                commands.append(_run("launchctl", "bootout", _launchd_target()))
                loaded = not commands[-1].ok
            if not loaded:
                commands.append(_run("launchctl", "bootstrap", f"gui/{os.getuid()}", files[0].path))
            else:
                commands.append(_run("launchctl", "kickstart", _launchd_target()))
    failed = [c for c in commands if not c.ok]
    written = "up to date" if not changed else "written"
    if not failed:
        if start:
            message = f"omnid is installed ({written}) and started by {manager}"
        elif commands:
            message = f"omnid is installed ({written}) and enabled; it starts at the next login or on first use"
        else:
            message = f"omnid is installed ({written}); launchd loads it at the next login"
    else:
        first = failed[0]
        message = (
            f"the unit files are installed ({written}) but `{first.command}` failed"
            f" ({'exit status ' + str(first.exit_status) if first.exit_status is not None else 'not run'}: "
            f"{first.output.splitlines()[-1] if first.output else 'no output'}); "
            + ("omnid is not running as a service yet. " if start else "")
            + "Clients start omnid on their own until the service manager can."
        )
    return Report(manager, "install", files, commands, ok=not failed or not start, message=message)


def uninstall(manager: Manager) -> Report:
    """Stop and disable the service and remove its files (idempotent)."""
    paths = list(wanted_files(manager))
    present = [p for p in paths if p.exists()]
    commands: list[CommandRun] = []
    tool = "systemctl" if manager == "systemd" else "launchctl"
    # Without the tool there is no service manager that could have the units loaded.
    manage = present and shutil.which(tool) is not None
    if manage:
        if manager == "systemd":
            commands.append(_run("systemctl", "--user", "disable", "--now", *SYSTEMD_UNITS))
        elif _run("launchctl", "print", _launchd_target()).ok:
            commands.append(_run("launchctl", "bootout", _launchd_target()))
    files = []
    for path in paths:
        try:
            path.unlink()
            files.append(UnitFile(str(path), "removed"))
        except FileNotFoundError:
            files.append(UnitFile(str(path), "absent"))
    if manage and manager == "systemd":
        commands.append(_run("systemctl", "--user", "daemon-reload"))
    failed = [c for c in commands if not c.ok]
    if not present:
        message = "omnid was not installed as a service"
    elif failed:
        message = (
            f"removed the unit files, but `{failed[0].command}` failed "
            f"({failed[0].output.splitlines()[-1] if failed[0].output else 'no output'}); "
            f"{manager} may still have omnid loaded until it reloads"
        )
    else:
        message = f"omnid is no longer a {manager} service"
    return Report(manager, "uninstall", files, commands, ok=not failed, message=message)


def status(manager: Manager) -> ServiceStatus:
    files = []
    up_to_date = True
    installed = False
    for path, content in wanted_files(manager).items():
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            files.append(UnitFile(str(path), "absent"))
            up_to_date = False
            continue
        installed = True
        if current == content:
            files.append(UnitFile(str(path), "installed"))
        else:
            files.append(UnitFile(str(path), "differs"))
            up_to_date = False
    state: dict[str, str] = {}
    detail = ""
    if manager == "systemd":
        for verb in ("is-enabled", "is-active"):
            run = _run("systemctl", "--user", verb, *SYSTEMD_UNITS)
            lines = run.output.splitlines()
            if run.exit_status is not None and len(lines) == len(SYSTEMD_UNITS):
                for unit, line in zip(SYSTEMD_UNITS, lines, strict=True):
                    state[f"{unit} {verb[3:]}"] = line.strip()
            else:
                detail = f"`{run.command}`: {lines[-1] if lines else 'failed'}"
    else:
        run = _run("launchctl", "print", _launchd_target())
        if run.ok:
            for line in run.output.splitlines():
                key, sep, value = line.strip().partition(" = ")
                if sep and key in ("state", "pid", "last exit code"):
                    state[key] = value
        else:
            state["state"] = "not loaded"
            detail = f"`{run.command}`: {run.output.splitlines()[-1] if run.output else 'failed'}"
    return ServiceStatus(manager, installed, installed and up_to_date, files, state, detail)
