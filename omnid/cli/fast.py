"""The hot commands without click: ``status``, ``session start``, ``hook`` and the ``shell``
commands ``omnid init`` installs run on every prompt, so they skip click's import.

Each takes exactly the arguments its click command documents; anything else (``--help``, a
missing or malformed option) returns None, and click runs the command and says what is
wrong, so behaviour and messages stay click's."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from ._text import EXIT_NOT_RUNNING, duration, echo, print_json, report_error, when

if TYPE_CHECKING:
    from omnid_client.protocol import DaemonStatus

FLAG, TEXT, INT, MANY = "flag", "text", "int", "many"
Spec = dict[str, tuple[str, str]]


def dispatch(argv: list[str]) -> int | None:
    """Run ``argv`` if it is a well-formed hot command and return its exit status; None otherwise."""
    if not argv:
        return None
    if argv[0] == "status":
        opts = parse(argv[1:], {"--json": ("as_json", FLAG)})
        return None if opts is None else status(**opts)
    if argv[0] == "hook":
        opts = parse(argv[1:], {"--tool": ("tool_id", TEXT), "--pid": ("pid", INT)})
        if opts is None:
            return None
        from ..offline.hooks import run_hook

        return run_hook(sys.stdin.buffer, **opts)
    if argv[:2] == ["session", "start"]:
        return _session_start(argv[2:])
    if argv[0] == "shell" and len(argv) > 1:
        return _shell(argv[1], argv[2:])
    return None


def parse(args: list[str], spec: Spec, positional: int = 0) -> dict[str, Any] | None:
    """Options by destination (absent ones omitted) and ``_args``, or None for anything
    unusual: click then parses the same arguments and reports what is wrong."""
    opts: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name not in spec:
            return None
        dest, kind = spec[name]
        if kind == FLAG:
            if eq:
                return None
            opts[dest] = True
            continue
        if not eq:
            if i == len(args) or args[i].startswith("-"):
                return None
            value = args[i]
            i += 1
        if kind == INT:
            if not value.isascii() or not value.lstrip("-").isdigit():
                return None
            opts[dest] = int(value)
        elif kind == MANY:
            opts.setdefault(dest, []).append(value)
        else:
            opts[dest] = value
    if len(rest) != positional:
        return None
    if positional:
        opts["_args"] = rest
    return opts


def _run(fn: Callable[[], None], as_json: bool) -> int:
    from omnid_client import OmnidError

    try:
        fn()
    except (OmnidError, OSError) as e:
        return report_error(e, as_json)
    return 0


# --- status ----------------------------------------------------------------------------


def status(as_json: bool = False) -> int:
    """``omnid status``: 0 running, 3 not running, 1 refused or any other error."""
    import json

    from omnid_client import Client, OmnidError, Unavailable, Unsupported
    from omnid_client.paths import read_status_file, socket_candidates
    from omnid_client.protocol import version_note

    from .. import __version__
    from ._metrics import summary_fields, summary_json

    try:
        with Client(autostart=False, client_name="omnid-cli") as client:
            st = client.status()
            try:
                metrics = client.metrics()
            except Unsupported:  # an older daemon
                metrics = None
    except Unavailable as e:
        published = read_status_file()
        tried = [str(p) for p, _ in socket_candidates()]
        if as_json:
            echo(json.dumps({"running": False, "reason": str(e), "sockets_tried": tried}))
        else:
            echo("omnid is not running")
            echo(f"  sockets tried: {', '.join(tried)}")
            if published:
                echo(f"  last status file names pid {published.get('pid')} (stale)")
        return EXIT_NOT_RUNNING
    except (OmnidError, OSError) as e:
        # A refusal (another uid's daemon, an unsafe socket directory) is not "not running":
        # its reason on stderr, or a JSON error object, and exit 1, as every other command.
        return report_error(e, as_json)
    note = version_note(__version__, st.version)
    if as_json:
        import msgspec

        print_json({
            "running": True, **msgspec.structs.asdict(st), "client_version": __version__, "version_note": note,
            "metrics": summary_json(metrics) if metrics is not None else None,
        })
        return 0
    print_status(st)
    for name, value in summary_fields(metrics) if metrics is not None else ():
        if value is not None:
            echo(f"{name + ':':15} {value}")
    if note:
        echo(f"omnid: {note}", err=True)
    if st.config_state == "invalid":
        echo(f"omnid: the config file is invalid and ignored: {st.config_error}", err=True)
    return 0


def _seconds(value: float, zero: str) -> str:
    return zero if value == 0 else f"{value:g}s"


def _watching(st: DaemonStatus) -> str:
    text = f"{st.watched_processes} process(es) via {st.watcher}"
    swept = st.watched_processes - (st.pidfd_watches or 0)
    if st.pidfd_watches is not None and swept > 0:
        text += f" ({st.pidfd_watches} with a pidfd, the most its fd limit allows; {swept} by the sweep only)"
    return text


def _storage(st: DaemonStatus) -> str | None:
    if st.database_used_bytes is None:
        return None  # an older daemon
    used = f"{st.database_used_bytes} bytes used"
    if st.database_quota:
        used += f" of a {st.database_quota}-byte quota ({100 * st.database_used_bytes / st.database_quota:.0f}%)"
    else:
        used += " (no quota)"
    if st.storage_error:
        used += f"; WRITES REFUSED: {st.storage_error}"
    return used


def _embedding(st: DaemonStatus) -> str | None:
    model = st.settings.embedding_model if st.settings is not None else None
    if model is None:
        return None
    return f"{model} (UNUSABLE: {st.embedding_model_error})" if st.embedding_model_error else model


def print_status(st: DaemonStatus) -> None:
    last = (
        f"{when(st.last_reap.at)} ({st.last_reap.trigger}, {st.last_reap.reaped} reaped)" if st.last_reap else "never"
    )
    config = None
    if st.config_path is not None:
        config = {
            "default": f"{st.config_path} (no such file: built-in defaults)",
            "loaded": f"{st.config_path} (loaded {when(st.config_loaded_at)})",
            "invalid": f"{st.config_path} (INVALID, previous settings kept: {st.config_error})",
        }.get(st.config_state or "", st.config_path)
    settings = None
    if st.settings is not None:
        s = st.settings
        settings = (
            f"sweep every {s.sweep_interval:g}s, idle expiry {_seconds(s.idle_expiry, 'off')}, "
            f"retention {_seconds(s.retention, 'forever')}, durability {s.durability} "
            f"(synchronous={st.synchronous}), log level {s.log_level}"
        )
    inherited = st.socket_source in ("systemd", "launchd")
    socket_line = st.socket + (f" (inherited from {st.socket_source})" if inherited else "")
    lines = [
        ("omnid", f"running, pid {st.pid}, version {st.version}, protocol {st.protocol}"),
        ("uptime", duration(st.uptime)),
        ("socket", socket_line),
        (
            "database",
            f"{st.database} ({st.database_bytes} bytes, WAL {st.wal_bytes} bytes, schema v{st.schema_version})",
        ),
        ("storage", _storage(st)),
        ("log", st.log_target or st.log or "stderr"),
        ("config", config),
        ("settings", settings),
        ("embedding", _embedding(st)),
        ("service", (st.managed_by or "none (started on demand)") if st.config_path is not None else None),
        ("upgrade", st.upgrade_error),
        ("live sessions", str(st.live_sessions)),
        ("watching", _watching(st)),
        ("connections", str(st.connections)),
        ("events", f"{st.event_seq} so far, {st.subscribers} subscriber(s)"),
        ("tracking", ", ".join(st.tracked_roots) or None),
        ("last reap", last),
    ]
    if st.set_aside:
        lines.append(
            ("set aside", f"{', '.join(st.set_aside)} (corrupt database found at start; kept, a new one is in use)")
        )
    for name, value in lines:
        if value is not None:
            echo(f"{name + ':':15} {value}")


# --- session start ---------------------------------------------------------------------

SESSION_START: Spec = {
    "--tool": ("tool_id", TEXT),
    "--pid": ("pid", INT),
    "--type": ("session_type", TEXT),
    "--tool-version": ("tool_version", TEXT),
    "--workspace": ("workspace", TEXT),
    "--meta": ("meta", MANY),
    "--json": ("as_json", FLAG),
    "--track": ("track_workspace", FLAG),
}


def _session_start(args: list[str]) -> int | None:
    opts = parse(args, SESSION_START)
    if opts is None or "tool_id" not in opts:
        return None
    metadata = {}
    for pair in opts.pop("meta", []):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            return None
        metadata[key] = value
    as_json = opts.get("as_json", False)
    return _run(lambda: session_start(metadata=metadata, **opts), as_json)


def session_start(
    tool_id: str, pid: int | None = None, session_type: str = "default", tool_version: str | None = None,
    workspace: str | None = None, metadata: dict[str, str] | None = None, as_json: bool = False,
    *, resume_key: str | None = None, resume_ended: bool = False, track_workspace: bool = False,
) -> None:
    """Print the id of the live session for TOOL and PID, creating (or resuming) it if needed."""
    from omnid_client import Client

    with Client(client_name="omnid-cli") as client:
        got = client.get_or_create(
            tool_id,
            pid=pid if pid is not None else os.getppid(),
            tool_version=tool_version,
            workspace=workspace,
            session_type=session_type,
            metadata=metadata or {},
            # Acting for our parent: if it died and its pid was reused, refuse the stranger.
            owner_must_be_ancestor=pid is None,
            resume_key=resume_key,
            resume_ended=resume_ended,
            track_workspace=track_workspace,
        )
    if as_json:
        print_json(got)
    else:
        echo(got.session.session_id)


# --- the shell commands `omnid init` installs -------------------------------------------


def _shell(command: str, args: list[str]) -> int | None:
    from ..offline import shells

    if command == "start":
        opts = parse(args, {"--pid": ("pid", INT)}, positional=1)
        if opts is None or opts["_args"][0] not in shells.SHELLS:
            return None
        shell, pid = opts["_args"][0], opts.get("pid")
        return _run(lambda: echo(shells.start(shell, pid)), False)
    if command == "cd":
        opts = parse(args, {}, positional=2)
        if opts is None:
            return None
        session_id, cwd = opts["_args"]
        return _run(lambda: shells.record_cwd(session_id, cwd), False)
    if command == "end":
        opts = parse(args, {}, positional=1)
        if opts is None:
            return None
        session_id = opts["_args"][0]
        return _run(lambda: shells.end(session_id), False)
    return None
