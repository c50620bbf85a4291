"""``omnid doctor``'s checks, each looking at one thing (the daemon, its socket directory,
versions, the service unit, the database, the config, fd limits, clocks, the log) and saying
what it found and, for a problem, how to fix it.

Nothing here starts the daemon or writes."""

from __future__ import annotations

import resource
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import msgspec

from omnid_client import Client, OmnidError, PermissionDenied, Unavailable, __version__ as client_version
from omnid_client.paths import daemon_paths, read_status_file, socket_candidates
from omnid_client.protocol import version_note
from omnid_client.trust import check_socket_dir

from .. import __version__

if TYPE_CHECKING:
    from omnid_client.protocol import DaemonStatus

State = Literal["ok", "warn", "fail", "skip"]
FUTURE_SLACK = 300.0
"""Seconds a timestamp in the database may lie ahead of the clock (another host's clock)."""
CLOCK_SLACK = 5.0
"""Seconds the wall clock may have moved against the monotonic clock since the daemon started."""
QUOTA_WARN = 0.9
FD_RESERVE, PIDFD_SHARE = 32, 0.5  # as omnid/daemon/listener.py spends them
ERROR_WINDOW = 86400.0
"""The log's errors of the last day count."""


class Check(msgspec.Struct):
    name: str
    state: State
    message: str
    fix: str | None = None


class Report(msgspec.Struct):
    ok: bool
    """No check failed (warnings allowed): the exit status is 0."""
    checks: list[Check]


class Context:
    """What several checks share: the running daemon's status, if one answers."""

    def __init__(self) -> None:
        self.status: DaemonStatus | None = None
        self.error: OmnidError | None = None
        try:
            with Client(autostart=False, timeout=3.0, client_name="omnid-doctor") as client:
                self.status = client.status()
        except OmnidError as e:
            self.error = e
        self.paths = daemon_paths()


def check_daemon(ctx: Context) -> Check:
    if ctx.status is not None:
        st = ctx.status
        return Check("daemon", "ok", f"running, pid {st.pid}, on {st.socket}")
    if isinstance(ctx.error, Unavailable):
        return Check(
            "daemon", "warn", f"not running ({ctx.error})",
            "nothing to fix if no tool needs it now: clients start it on demand; `omnid serve --detach` starts it",
        )
    fix = "see the message; `omnid status` tells the same"
    if isinstance(ctx.error, PermissionDenied):
        fix = "the message says what is unsafe; a private OMNID_HOME avoids it"
    return Check("daemon", "fail", f"cannot be asked: {ctx.error}", fix)


def check_socket_dirs(ctx: Context) -> Check:
    found = []
    for path, how in socket_candidates():
        try:
            exists = check_socket_dir(path)
        except PermissionDenied as e:
            fix = "as the message says, or set OMNID_HOME to a private directory"
            return Check("socket directory", "fail", str(e), fix)
        found.append(f"{path.parent} ({how}: {'private' if exists else 'not created yet'})")
    return Check("socket directory", "ok", "; ".join(found))


def check_versions(ctx: Context) -> Check:
    mine = f"omnid {__version__}, omnid-client {client_version}"
    if client_version != __version__:
        return Check(
            "versions", "warn", f"{mine}: the two packages differ",
            "pip install the same version of omnid and omnid-client",
        )
    if ctx.status is None:
        return Check("versions", "ok", f"{mine}; no daemon to compare with")
    note = version_note(__version__, ctx.status.version)
    if note:
        return Check("versions", "warn", f"{mine}, daemon {ctx.status.version}: {note}",
                     "`omnid stop`: the next client starts the installed version")
    return Check("versions", "ok", f"{mine}, daemon {ctx.status.version}")


def check_service(ctx: Context) -> Check:
    from .service import ServiceError, detect_manager, status

    try:
        st = status(detect_manager())
    except ServiceError as e:
        return Check("service", "skip", str(e))
    if not st.installed:
        return Check("service", "ok", f"no {st.manager} service installed: clients start omnid on demand")
    if not st.up_to_date:
        differs = ", ".join(f.path for f in st.files if f.state != "installed")
        return Check("service", "warn", f"{st.manager} service installed, but {differs} differ from what "
                     "this omnid would install (another interpreter or an older omnid)", "omnid service install")
    state = ", ".join(f"{k} {v}" for k, v in st.state.items())
    return Check("service", "ok", f"{st.manager} service installed and current" + (f" ({state})" if state else ""))


def _open_database(path: Path) -> sqlite3.Connection:
    from .transfer import open_readonly

    return open_readonly(path, check_schema=False)


def check_database(ctx: Context) -> Check:
    from .transfer import TransferError

    path = Path(ctx.status.database) if ctx.status is not None else ctx.paths.database
    try:
        db = _open_database(path)
    except TransferError as e:
        if e.code == "not_found":
            return Check("database", "ok", f"{path} not created yet (omnid has not run with this OMNID_HOME)")
        return Check("database", "fail", str(e), f"omnid backup to save what can be read; see `omnid logs` ({path})")
    try:
        result = [row[0] for row in db.execute("PRAGMA quick_check")]
        future = db.execute(
            "SELECT count(*), max(max(started_at, last_activity, coalesce(ended_at, 0))) FROM sessions "
            "WHERE max(started_at, last_activity, coalesce(ended_at, 0)) > ?", (time.time() + FUTURE_SLACK,)
        ).fetchone()
    except sqlite3.DatabaseError as e:
        return Check("database", "fail", f"{path}: {e}", "stop omnid; it sets a corrupt database aside at start")
    finally:
        db.close()
    if result != ["ok"]:
        return Check("database", "fail", f"{path}: quick_check found: {'; '.join(result[:5])}",
                     "`omnid stop`; the next start sets the corrupt file aside and begins a new one (kept beside it)")
    if future[0]:
        ahead = future[1] - time.time()
        return Check("database", "warn", f"{path}: integrity ok, but {future[0]} session(s) have times up to "
                     f"{ahead:.0f}s in the future", "check the system clock (timedatectl / sntp)")
    return Check("database", "ok", f"{path}: integrity ok")


def check_quota(ctx: Context) -> Check:
    from ..config import ConfigError, config_path, read

    if ctx.status is not None and ctx.status.database_used_bytes is not None:
        used, quota = ctx.status.database_used_bytes, ctx.status.database_quota
    else:
        used = sum(p.stat().st_size for p in (ctx.paths.database, Path(f"{ctx.paths.database}-wal")) if p.exists())
        try:
            settings = read(config_path())
        except ConfigError:
            settings = None
        quota = settings.max_database_bytes if settings is not None else None
    if not quota:
        return Check("storage", "ok", f"{used} bytes used, no quota (max_database_bytes)")
    share = used / quota
    text = f"{used} of {quota} bytes ({100 * share:.0f}% of max_database_bytes)"
    fix = "raise max_database_bytes in the config file, or `omnid retention run --older-than 30d`"
    if share >= 1:
        return Check("storage", "fail", text + ": writes are refused", fix)
    if share >= QUOTA_WARN:
        return Check("storage", "warn", text, fix)
    return Check("storage", "ok", text)


def check_config(ctx: Context) -> Check:
    from ..config import ConfigError, config_path, read

    path = config_path()
    try:
        settings = read(path)
    except ConfigError as e:
        return Check("config", "fail", f"{path}: {e}", f"omnid config check {path}; fix what it names")
    return Check("config", "ok", f"{path}: {'valid' if settings is not None else 'none, the defaults apply'}")


def check_embedding(ctx: Context) -> Check:
    """The configured embedding_model loads here as the daemon would load it (this imports
    model2vec in the doctor's process, never in the daemon's)."""
    from ..config import ConfigError, config_path, read
    from ..jobs.embedder import ModelError, load_model

    settings = ctx.status.settings if ctx.status is not None else None
    if settings is None:
        try:
            settings = read(config_path())
        except ConfigError:
            settings = None
    path = settings.embedding_model if settings is not None else None
    if path is None:
        return Check("embedding", "skip", "no embedding_model configured: callers pass their own vectors")
    fix = (
        "set embedding_model to a model2vec model directory (StaticModel.save_pretrained) "
        "and pip install 'omnid[embed]'"
    )
    try:
        model = load_model(path)
    except (ModelError, OSError) as e:
        return Check("embedding", "fail", str(e), fix)
    return Check("embedding", "ok", f"{path}: a model2vec model of {model.dim} dimensions")


def fd_limit(pid: int | None) -> int:
    """The soft RLIMIT_NOFILE of the daemon (or of this process)."""
    if pid is not None and sys.platform.startswith("linux"):
        import psutil

        try:
            return int(psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)[0])
        except (psutil.Error, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_fds(ctx: Context) -> Check:
    st = ctx.status
    limit = fd_limit(st.pid if st is not None else None)
    fix = "raise the open-files limit: `ulimit -n 65536` before starting it, or LimitNOFILE=65536 in omnid.service"
    if limit == resource.RLIM_INFINITY:
        return Check("file descriptors", "ok", "no open-files limit")
    budget = st.pidfd_budget if st is not None and st.pidfd_budget is not None else int((limit - 64) * PIDFD_SHARE)
    if st is None:
        if limit < 256:
            return Check("file descriptors", "warn", f"open-files limit {limit}: few owners get an exit watch", fix)
        return Check("file descriptors", "ok", f"open-files limit {limit}: about {budget} owners get an exit watch")
    text = f"limit {limit}; watching {st.watched_processes} owner(s), budget {budget} exit watches"
    if st.pidfd_watches is not None and st.watched_processes > st.pidfd_watches:
        swept = st.watched_processes - st.pidfd_watches
        return Check("file descriptors", "warn", f"{text}: {swept} owner(s) found dead by the sweep only", fix)
    if st.watched_processes > 0.8 * budget > 0:
        return Check("file descriptors", "warn", f"{text}: near the budget", fix)
    return Check("file descriptors", "ok", text)


def check_clock(ctx: Context) -> Check:
    if ctx.status is None:
        return Check("clock", "ok", "no daemon to compare clocks with (the database's times are checked above)")
    st = ctx.status
    drift = (time.time() - st.started_at) - st.uptime
    if abs(drift) > CLOCK_SLACK:
        return Check(
            "clock", "warn",
            f"the wall clock moved {drift:+.0f}s against the monotonic clock since the daemon started "
            f"(a manual change, a suspend without time sync, or an NTP step)",
            "enable time sync (timedatectl set-ntp true); omnid's timeouts use the monotonic clock",
        )
    return Check("clock", "ok", f"wall and monotonic clocks agree within {abs(drift):.1f}s since the daemon started")


def check_log(ctx: Context) -> Check:
    from .logread import tail_file

    st = ctx.status
    target = (st.log_target or "") if st is not None else ""
    if target in ("journald", "stderr (systemd)"):
        return _journal_errors()
    log = Path(st.log) if st is not None and st.log else ctx.paths.log
    if st is not None and not st.log:
        return Check("log", "skip", f"the daemon logs to {target or 'stderr'}, which doctor cannot read")
    try:
        errors, _ = tail_file(log, 3, "error", time.time() - ERROR_WINDOW)
    except FileNotFoundError:
        return Check("log", "ok", f"{log}: no log yet")
    except OSError as e:
        return Check("log", "warn", f"{log}: cannot read it: {e}", f"check {log}'s owner and type")
    return _log_verdict(str(log), [f"{r.logger}: {r.message.splitlines()[0]}" for r in errors])


def _journal_errors() -> Check:
    from .logread import journal

    found: list[str] = []
    try:
        journal(lambda r: found.append(f"{r.logger}: {r.message}"), 3, False, "error", time.time() - ERROR_WINDOW)
    except OSError as e:
        return Check("log", "skip", f"cannot read the journal: {e}")
    return _log_verdict("the journal (omnid.service)", found)


def _log_verdict(where: str, errors: list[str]) -> Check:
    if errors:
        return Check("log", "warn", f"{where}: errors in the last day, the latest: " + " | ".join(errors),
                     "`omnid logs --level error` shows them with their times")
    return Check("log", "ok", f"{where}: no errors in the last day")


CHECKS: tuple[Callable[[Context], Check], ...] = (
    check_daemon, check_socket_dirs, check_versions, check_service, check_database, check_quota,
    check_config, check_embedding, check_fds, check_clock, check_log,
)


def run_checks() -> Report:
    ctx = Context()
    checks = []
    for check in CHECKS:
        try:
            checks.append(check(ctx))
        except Exception as e:  # one broken check must not hide the others' findings
            checks.append(Check(check.__name__.removeprefix("check_"), "fail", f"the check itself failed: {e!r}"))
    published = read_status_file(ctx.paths.state_dir)
    if ctx.status is None and published.get("pid"):
        checks[0].message += f"; the status file names pid {published['pid']} (stale)"
    return Report(ok=all(c.state != "fail" for c in checks), checks=checks)
