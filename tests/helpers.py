"""What every test shares: a real daemon process, waiting on conditions, the omnid command, database reads."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import psutil
import pytest

from omnid.identity import ProcessIdentity, boot_id
from omnid_client import Client, Session
from omnid_client._core import Call, parse_response
from omnid_client.paths import daemon_paths
from omnid_client.protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    ContextEvent,
    NewMessage,
)

ROOT = Path(__file__).resolve().parent.parent
"""The repository's top folder (tests/ sits right under it; the test modules one level deeper)."""
START_TIMEOUT = 15.0


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_loop_until(loop: asyncio.AbstractEventLoop, predicate, timeout: float = 10.0) -> None:
    """Run ``loop`` until ``predicate()`` holds; fail the test after ``timeout`` seconds."""

    async def poll() -> None:
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                pytest.fail(f"timed out after {timeout}s")
            await asyncio.sleep(0.005)

    loop.run_until_complete(poll())


def db_rows(db_path: Path, sql: str, *args: Any) -> list[tuple]:
    """Rows from a database file (a daemon's, a backup), opened read-only."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def unread_by_peer(sock: socket.socket) -> int:
    """Bytes sent on a Unix stream socket that its peer has not read yet (SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


def accepts(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class DaemonProcess:
    """A daemon run as ``python -m omnid serve`` with this test's environment."""

    def __init__(self, home: Path):
        self.home = home
        self.proc: subprocess.Popen | None = None

    @property
    def paths(self):
        return daemon_paths()

    @property
    def socket(self) -> Path:
        return self.paths.socket

    @property
    def log(self) -> Path:
        return self.home / "omnid.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *extra: str, **popen) -> "DaemonProcess":
        """Start and wait until the socket accepts; ``popen`` goes to ``subprocess.Popen``."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnid", "serve", "--log-file", str(self.log), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.socket):
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"daemon exited with {self.proc.returncode}: {err.decode()}\nlog:\n{self.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"daemon did not listen on {self.socket}\nlog:\n{self.log_text()}")
            time.sleep(0.01)
        return self

    def client(self, **kwargs) -> Client:
        """A client of this daemon. Its deadlines only guard a hang (a loaded machine has
        taken over the 1 s default to welcome a fresh daemon's first client); tests of the
        deadlines themselves pass their own."""
        kwargs.setdefault("autostart", False)
        kwargs.setdefault("connect_timeout", 30.0)
        kwargs.setdefault("timeout", 60.0)
        return Client(**kwargs)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        finally:
            self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def omnid_daemons(home: Path) -> list[psutil.Process]:
    """Every live ``omnid serve`` process whose OMNID_HOME is ``home``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or "serve" not in cmdline:
            continue
        if not any("omnid" in part for part in cmdline):
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("OMNID_HOME") == str(home):
                found.append(proc)
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- owner processes as the kernel sees them -------------------------------------------


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [0] is the state (field 3)."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rindex(b")") + 2 :].decode().split()


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks after boot: field 22 of /proc/PID/stat."""
    return int(proc_stat(pid)[22 - 3])


def process_state(pid: int) -> str:
    return proc_stat(pid)[0]


class ForkedOwner:
    """A child of the test process that runs until ``exit()``, and then stays an unreaped
    zombie until the fixture's teardown waits for it."""

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: block until the parent writes or goes away, then exit
            os.close(w)
            try:
                os.read(r, 1)
            finally:
                os._exit(0)
        os.close(r)
        self.pid = pid
        self._w = w
        self.reaped = False

    def exit(self) -> None:
        """Make it exit and wait until it is a zombie (not reaped)."""
        if self._w >= 0:
            os.write(self._w, b"x")
            os.close(self._w)
            self._w = -1
        wait_for(lambda: process_state(self.pid) == "Z", what=f"child {self.pid} to become a zombie")

    def reap(self) -> None:
        if not self.reaped:
            if self._w >= 0:
                os.close(self._w)
                self._w = -1
            os.waitpid(self.pid, 0)
            self.reaped = True


RUNNING = "running"
EXITED = "process exited"
REUSED = "pid reused by another process"
REBOOTED = "machine rebooted"
"""The causes ``omnid.identity.is_alive`` gives for an owner in each state."""


def identity_of(pid: int, *, shift: int = 0, boot: str | None = None) -> ProcessIdentity:
    """``pid`` as recorded: its real start ticks moved by ``shift`` (a reused pid), and
    ``boot`` as the boot id (another boot) instead of this one."""
    return ProcessIdentity(pid, start_ticks(pid) + shift, boot or boot_id())


def open_fds() -> int:
    """File descriptors this process holds (exit watches hold one per owner)."""
    return psutil.Process().num_fds()


def fd_targets(pid: int | str = "self") -> list[str]:
    """What each open descriptor of process ``pid`` is, as /proc names it: a path, or
    ``socket:[inode]``, ``anon_inode:[pidfd]``, ``pipe:[inode]``... (one closed meanwhile is
    left out)."""
    fd_dir = f"/proc/{pid}/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):
            targets.append(os.readlink(f"{fd_dir}/{fd}"))
    return targets


@contextlib.contextmanager
def no_free_fds(leave: int = 0) -> Iterator[None]:
    """This process out of file descriptors, for real: RLIMIT_NOFILE lowered to just past
    its highest open descriptor, and every lower free number taken (but ``leave`` of them),
    so any ``open`` or ``pidfd_open`` past those fails with EMFILE until the block ends."""
    import resource

    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    taken: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + leave, old[1]))
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.dup(0))
        for _ in range(leave):
            os.close(taken.pop())
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


@contextlib.contextmanager
def started_daemons(make: Callable[[int], DaemonProcess]) -> Iterator[Callable[..., DaemonProcess]]:
    """``start(*serve_args, **popen_kwargs)`` starts the n-th daemon ``make(n)`` builds; at
    the end each still running is stopped (status 0), and no log may hold a traceback."""
    started: list[DaemonProcess] = []

    def start(*extra: str, **popen) -> DaemonProcess:
        d = make(len(started)).start(*extra, **popen)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.running:
            assert d.stop() == 0, d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()


class Tmux:
    """A private tmux server (its own socket) running one command in a real terminal."""

    def __init__(self, command: list[str], cwd: Path, width: int = 200, height: int = 50):
        self.name = f"omnid-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.run("new-session", "-d", "-x", str(width), "-y", str(height), "-c", str(cwd), *command)

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.name, *args], check=True, capture_output=True, text=True, timeout=30
        ).stdout

    def type(self, line: str) -> None:
        self.run("send-keys", "-l", line)
        self.run("send-keys", "Enter")

    def keys(self, *keys: str) -> None:
        """Press keys by tmux's names (Enter, Escape, Up) or as literal text (-l)."""
        for key in keys:
            self.run("send-keys", *(["-l", key] if len(key) == 1 else [key]))

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J", "-S", "-200")

    def visible(self) -> list[str]:
        """The lines on screen now, as shown (no scrollback, wrapped lines not joined)."""
        return self.run("capture-pane", "-p").split("\n")[:-1]

    def pane_pid(self) -> int:
        return int(self.run("display-message", "-p", "#{pane_pid}"))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=30)


# --- the omnid command, as a user runs it ----------------------------------------------


def run_omnid(
    *args: str, cwd: Path | None = None, stdin=subprocess.DEVNULL, text: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python -m omnid ARGS`` in this test's environment (its OMNID_HOME)."""
    return subprocess.run(
        [sys.executable, "-m", "omnid", *args],
        env=os.environ,
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        text=text,
        timeout=timeout,
        check=False,
    )


def _ran(args: tuple[str, ...], r: subprocess.CompletedProcess) -> str:
    return f"omnid {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def omnid_ok(*args: str, cwd: Path | None = None, text: bool = True):
    """The stdout of a command that must succeed."""
    r = run_omnid(*args, cwd=cwd, text=text)
    assert r.returncode == 0, _ran(args, r)
    return r.stdout


def omnid_json(*args: str, cwd: Path | None = None):
    return json.loads(omnid_ok(*args, "--json", cwd=cwd))


def omnid_error(*args: str, cwd: Path | None = None) -> dict:
    """The JSON error of a command that must exit 1."""
    r = run_omnid(*args, "--json", cwd=cwd)
    assert r.returncode == 1, _ran(args, r)
    return json.loads(r.stdout)["error"]


# --- session content ---------------------------------------------------------------------

TOOL = "content-test"
MEMORY_ID = re.compile(r"^mem_[0-9a-f]{12}$")
SESSION_MEMORY_ID = re.compile(r"^smem_[0-9a-f]{12}$")
TASK_ID = re.compile(r"^task_[0-9a-f]{16}$")
UNKNOWN_SESSION = "00000000-0000-4000-8000-000000000000"
UNKNOWN_PROJECT = "prj_000000000000"
UNKNOWN_TASK = "task_0000000000000000"
SID = "<the session>"
"""Stands for the test's session id in tables of raw parameters."""
CONTENT_TABLES = (
    "sessions", "projects", "context_events", "memories", "memory_versions",
    "session_memories", "messages", "tasks", "interactions", "search_index",
)



def start(client: Client, workspace: Path, tool: str = TOOL, **metadata: Any) -> Session:
    """A new live session, owned by this test process, in ``workspace`` (with ``metadata``:
    a title, goal or summary, say)."""
    return client.get_or_create(tool, workspace=str(workspace), dedup=False, metadata=metadata).session


def ended(client: Client, workspace: Path) -> Session:
    return client.end(start(client, workspace).session_id)


SEARCH_ROWS = (
    "(SELECT kind, ref_id, session_id, project_id FROM search_index "
    "UNION ALL SELECT kind, ref_id, session_id, project_id FROM search_pending)"
)
"""Every search row: those in the full-text index, and those a running daemon has committed
but not yet moved into it (see ``store.search``)."""


def count(home: Path, table: str, where: str = "1", *args: Any) -> int:
    """Rows of ``table`` (for search_index: every search row, ``SEARCH_ROWS``)."""
    source = SEARCH_ROWS if table == "search_index" else table
    return db_rows(home / "omnid.db", f"SELECT count(*) FROM {source} WHERE {where}", *args)[0][0]


def table_counts(home: Path) -> dict[str, int]:
    """Rows in every content table: equal before and after means nothing was written."""
    return {table: count(home, table) for table in CONTENT_TABLES}


def miscounted_context(home: Path) -> list[tuple]:
    """(session_id, counter, rows) of each session whose context event counter differs from
    its number of context events: always empty."""
    return db_rows(
        home / "omnid.db",
        "SELECT session_id, context_event_count, n FROM (SELECT session_id, context_event_count, "
        "(SELECT count(*) FROM context_events c WHERE c.session_id = s.session_id) AS n FROM sessions s) "
        "WHERE context_event_count != n",
    )


def raw_call(client: Client, method: str, params: dict[str, Any]) -> Any:
    """Send ``params`` untyped, so the daemon (not the client library) judges them."""
    return client._call(Call(method, params))


def refused(error: type[Exception], case: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Exception:
    """The ``error`` that ``fn(*args, **kwargs)`` raises; fails naming ``case`` if it raises
    another or none. For tables of cheap cases checked against one daemon."""
    try:
        fn(*args, **kwargs)
    except error as e:
        return e
    except Exception as e:  # noqa: BLE001 - reported as the failure
        pytest.fail(f"{case}: expected {error.__name__}, got {type(e).__name__}: {e}")
    pytest.fail(f"{case}: expected {error.__name__}, nothing was raised")


def with_session(params: dict[str, Any], session_id: str) -> dict[str, Any]:
    return {k: session_id if v is SID else v for k, v in params.items()}


def ev(kind: str, subject: str, importance: float | None = None, detail: str | None = None) -> ContextEvent:
    return ContextEvent(kind, subject, importance, detail)  # type: ignore[arg-type]


def msg(content: str = "hi", role: str = "user", **fields: Any) -> NewMessage:
    return NewMessage(role, content, **fields)  # type: ignore[arg-type]


def text_packing_to(size: int) -> str:
    """A string whose JSON encoding (how omnid stores and measures values) is exactly ``size`` bytes."""
    text = "x" * (size - 2)  # the two quotes
    assert len(msgspec.json.encode(text)) == size
    return text


def metadata_packing_to(size: int) -> dict[str, str]:
    """Metadata whose JSON encoding is exactly ``size`` bytes."""
    metadata = {"b": text_packing_to(size - 6)}  # {"b": and }
    assert len(msgspec.json.encode(metadata)) == size
    return metadata


def make_repo(root: Path, marker: str = ".git", *subdirs: str) -> Path:
    root.mkdir(parents=True)
    if marker == ".git-file":  # a git worktree: .git is a file
        (root / ".git").write_text("gitdir: /elsewhere\n")
    else:
        (root / marker).mkdir()
    for sub in subdirs:
        (root / sub).mkdir(parents=True)
    return root




# --- the raw wire, other uids, socket activation -----------------------------------------

NOBODY = 65534
"""The real second uid of permission tests (we run as root)."""


SERVE = [sys.executable, "-m", "omnid", "serve"]


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def request(request_id: int, method: str, params: Any = None) -> bytes:
    body = {"id": request_id, "method": method, "params": {} if params is None else params}
    return frame(msgspec.msgpack.encode(body))


def hello(major: int = PROTOCOL_MAJOR, minor: int = PROTOCOL_MINOR, request_id: int = 0) -> bytes:
    params = {"proto_major": major, "proto_minor": minor, "client_version": "test", "client_name": "raw"}
    return request(request_id, "hello", params)


def nested_arrays(depth: int) -> msgspec.Raw:
    """``depth`` arrays, each holding the next, around a nil: too deep for any decoder's recursion."""
    return msgspec.Raw(b"\x91" * depth + b"\xc0")


class Wire:
    """One raw connection: bytes out, decoded reply frames in, no client-library logic."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(os.fspath(path))
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        # The daemon may close before reading everything; its last reply is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)

    def end_writing(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def reply(self):
        """The next reply, or None once the daemon has closed the connection."""
        header = self._recv_exact(4)
        if header is None:
            return None
        (length,) = struct.unpack(">I", header)
        payload = self._recv_exact(length)
        assert payload is not None, "the daemon closed the connection in the middle of a frame"
        return parse_response(payload)

    def replies_until_closed(self) -> list:
        """Every reply until the daemon closes (raises socket.timeout if it never does)."""
        replies = []
        while (resp := self.reply()) is not None:
            replies.append(resp)
        return replies

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:  # closed with our unread bytes still queued
                chunk = b""
            if not chunk:
                assert not buf, f"connection closed after {len(buf)} of {n} bytes"
                return None
            buf += chunk
        return buf


def error_of(resp) -> tuple[str, str]:
    assert resp is not None, "expected an error reply, but the connection was closed without one"
    assert resp.error is not None, f"expected an error reply, got a result {bytes(resp.result)!r}"
    return resp.error.code, resp.error.message


def assert_serving(d: DaemonProcess, *, other_clients: int = 0) -> None:
    """The daemon is alive, answers a new client, and holds no connection but that one
    and ``other_clients`` the test keeps open (finished raw connections were dropped)."""
    assert d.running, f"daemon exited with {d.proc.returncode}\n{d.log_text()}"
    with d.client() as c:
        assert c.status().pid == d.pid
        expected = 1 + other_clients
        wait_for(lambda: c.status().connections == expected, what="the daemon to drop finished connections")


class Refusal:
    """What ``omnid serve`` said when it refused to start."""

    def __init__(self, home: Path):
        log = home / "refused.log"
        proc = subprocess.run(
            [*SERVE, "--log-file", str(log)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
        self.stderr = proc.stderr
        self.log = log.read_text() if log.exists() else ""
        assert proc.returncode != 0, f"omnid serve started (status 0)\nstderr:\n{self.stderr}\nlog:\n{self.log}"
        assert self.stderr.strip(), "omnid serve refused without saying why"

    def assert_clean(self) -> None:
        """An expected refusal is one clear line, not a crash report."""
        assert "Traceback" not in self.stderr, self.stderr
        assert "Traceback" not in self.log, self.log


def as_user(fn: Callable[[], Any], uid: int = NOBODY, env: dict[str, str | None] | None = None) -> dict:
    """Run ``fn`` in a forked child as ``uid`` (gid the same, no groups), with ``env``
    changes (None removes a variable). Modules ``fn`` needs must be imported already: the
    interpreter's own files may be out of that uid's reach.

    Returns ``{"ok": result}`` or ``{"raised": text, "type": name, "errno": n}``; the result
    must be JSON-able.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                for name, value in (env or {}).items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                out = {"ok": fn()}
            except BaseException as e:
                kind = type(e).__name__
                out = {"raised": f"{kind}: {e}", "type": kind, "errno": getattr(e, "errno", None)}
            os.write(write_end, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    assert data, f"the child running as uid {uid} reported nothing"
    return json.loads(data)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


class Activator:
    """``systemd-socket-activate -l SOCKET python -m omnid serve``: it binds the socket and,
    on the first connection, execs the daemon in its place with the socket as fd 3."""

    def __init__(self, home: Path, sock: Path):
        self.home = home
        self.sock = sock
        passed = []
        for name in ("OMNID_HOME", "PYTHONPATH", "NOTIFY_SOCKET"):  # it passes on only what it is told to
            if name in os.environ:
                passed += ["-E", f"{name}={os.environ[name]}"]
        self.output = open(home / "activate.out", "wb")
        self.proc = subprocess.Popen(
            [SOCKET_ACTIVATE, "-l", str(sock), *passed, sys.executable, "-m", "omnid", "serve",
             "--log-file", str(home / "omnid.log")],
            stdin=subprocess.DEVNULL, stdout=self.output, stderr=self.output,
        )
        wait_for(lambda: b"Listening on" in (home / "activate.out").read_bytes(), what="the socket to be bound")

    def close(self) -> None:
        for proc in psutil.Process(self.proc.pid).children(recursive=True) if self.proc.poll() is None else []:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.output.close()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.home / "omnid.log").read_text()
        return ""


PIP_TIMEOUT = 300


@contextlib.contextmanager
def built_wheels() -> Iterator[dict[str, Path]]:
    """The two wheels (by distribution: omnid, omnid_client), built by pip from a copy of
    the sources a fresh clone has; removed at the end."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="omnid-wheels-"))
    try:
        src = work / "src"
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
        shutil.copytree(ROOT / "omnid", src / "omnid", ignore=ignore)
        shutil.copytree(ROOT / "client", src / "client", ignore=ignore)
        out = work / "wheels"
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src / "client"), str(src)],
            capture_output=True, text=True, timeout=PIP_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        assert built.returncode == 0 and "error" not in built.stderr.lower(), built.stderr
        found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
        assert set(found) == {"omnid", "omnid_client"}, found
        yield found
    finally:
        shutil.rmtree(work, ignore_errors=True)
