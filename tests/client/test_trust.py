"""Another local user must not be able to impersonate the daemon, squat its socket, or be
told "not running" when it is refused; and a client bounds and contains everything it does.

Attackers are real processes of uid 65534 (``nobody``); we run as root to set the stage.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from omnid.cli import main
from omnid_client import AsyncClient, Client, PermissionDenied
from omnid_client.paths import daemon_paths, socket_candidates
from omnid_client.protocol import HEADER, PROTOCOL_MAJOR, PROTOCOL_MINOR, ResponseFrame, Welcome
from tests.helpers import NOBODY, as_user, wait_for

VICTIM = 54321
"""A uid with no account (so its home comes from HOME) whose old fallback socket directory
``/tmp/omnid-54321`` an attacker can squat."""

FORGED_WELCOME = msgspec.msgpack.encode(ResponseFrame(0, result=Welcome(PROTOCOL_MAJOR, PROTOCOL_MINOR, "6.6.6", 1)))
FORGED_WELCOME = HEADER.pack(len(FORGED_WELCOME)) + FORGED_WELCOME

CALLS_BOUND = 10.0
"""How long a call with ``timeout=0.5`` may take on a shared, noisy machine: loose, but far
below the 60 s that connect_timeout/start_timeout would allow."""


class FakeDaemon:
    """Another user's impostor: a process of ``uid`` listening on ``path`` (creating its
    directory 0777 first if asked), answering everything with a forged Welcome, and
    counting every byte it receives (``received``, once stopped)."""

    def __init__(self, path: Path, *, uid: int = NOBODY, make_dir: bool = False):
        self.path = path
        self.uid = uid
        self.make_dir = make_dir
        self.received: int | None = None

    def __enter__(self) -> "FakeDaemon":
        ready_r, ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self._result_r, result_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self._stop_w)  # so that the parent's close is our signal to stop
                os.setgroups([])
                os.setgid(self.uid)
                os.setuid(self.uid)
                self._serve(ready_w, result_w)
            except BaseException as e:
                os.write(ready_w, f"error {e!r}".encode())
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(result_w)
        os.close(self._stop_r)
        with os.fdopen(ready_r, "rb") as f:
            status = f.read().decode()
        if status != "ready":
            os.close(self._stop_w)
            self._reap()
            pytest.fail(f"the fake daemon did not start: {status}")
        return self

    def _serve(self, ready_w: int, result_w: int) -> None:
        if self.make_dir:
            os.mkdir(self.path.parent)
            os.chmod(self.path.parent, 0o777)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.fspath(self.path))
        os.chmod(self.path, 0o777)  # anyone may connect: the victim is who it wants
        listener.listen(16)
        os.write(ready_w, b"ready")
        os.close(ready_w)
        conns: list[socket.socket] = []
        got = 0
        while True:
            readable, _, _ = select.select([listener, self._stop_r, *conns], [], [])
            if self._stop_r in readable:
                break
            if listener in readable:
                conns.append(listener.accept()[0])
            for conn in [c for c in conns if c in readable]:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                got += len(data)
                if data:
                    conn.sendall(FORGED_WELCOME)
                else:
                    conns.remove(conn)
                    conn.close()
        os.write(result_w, str(got).encode())

    def __exit__(self, *exc: Any) -> None:
        os.close(self._stop_w)
        with os.fdopen(self._result_r, "rb") as f:
            text = f.read().decode()
        self._reap()
        self.received = int(text) if text else None

    def _reap(self) -> None:
        os.waitpid(self.pid, 0)


def attempt_status(**options: Any) -> dict:
    """What a blocking and an async client (``options``) got from ``status()``: "ok" or the
    type and message of what they raised, and how long each took."""
    async def run() -> None:
        async with AsyncClient(**options) as c:
            await c.status()

    def sync() -> None:
        with Client(**options) as c:
            c.status()

    out: dict[str, Any] = {}
    for kind, call in (("sync", sync), ("async", lambda: asyncio.run(run()))):
        started = time.monotonic()
        try:
            call()
            out[kind] = "ok"
        except Exception as e:
            out[kind] = type(e).__name__
            out[f"{kind}_message"] = str(e)
        out[f"{kind}_took"] = time.monotonic() - started
    return out


@pytest.fixture
def reachable_home(home) -> Path:
    """``home`` opened for other users to walk through (not to list or write)."""
    os.chmod(home, 0o711)
    return home


# --- 1: the socket squat -----------------------------------------------------------------


def test_a_squatted_shared_temp_dir_is_never_sent_a_byte(tmp_path):
    try:
        pwd.getpwuid(VICTIM)
        pytest.skip(f"uid {VICTIM} has an account here")
    except KeyError:
        pass
    victim_home = Path(tempfile.mkdtemp(prefix="victim-", dir="/tmp"))
    os.chown(victim_home, VICTIM, VICTIM)
    squatted = Path(f"/tmp/omnid-{VICTIM}")
    shutil.rmtree(squatted, ignore_errors=True)
    env = {"HOME": str(victim_home), "OMNID_HOME": None, "OMNID_SOCKET": None}

    def victim() -> dict:
        out = attempt_status(autostart=False, timeout=5)
        out["socket"] = str(daemon_paths().socket)
        out["candidates"] = [str(p) for p, _ in socket_candidates()]
        return out

    try:
        with FakeDaemon(squatted / "omnid.sock", make_dir=True) as fake:
            assert stat.S_IMODE(os.lstat(squatted).st_mode) == 0o777
            out = as_user(victim, uid=VICTIM, env=env)
    finally:
        shutil.rmtree(squatted, ignore_errors=True)
        shutil.rmtree(victim_home, ignore_errors=True)

    assert fake.received == 0, f"the victim's client sent the squatter {fake.received} bytes ({out})"
    result = out["ok"]
    assert result["sync"] in ("Unavailable", "PermissionDenied"), result
    assert result["async"] in ("Unavailable", "PermissionDenied"), result
    # The victim's own daemon would bind in a private directory of its state dir instead.
    assert result["socket"] == f"{victim_home}/.local/state/omnid/run/omnid.sock", result
    assert not any(c.startswith(f"{squatted}/") for c in result["candidates"]), result


def test_a_socket_dir_owned_by_another_user_is_refused_before_sending(reachable_home):
    run = reachable_home / "run"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)

    with FakeDaemon(run / "omnid.sock") as fake:
        out = attempt_status(autostart=True, timeout=10)

    assert fake.received == 0, out
    assert out["sync"] == "PermissionDenied" and out["async"] == "PermissionDenied", out
    for message in (out["sync_message"], out["async_message"]):
        assert str(run) in message and f"uid {NOBODY}" in message and "OMNID_HOME" in message, message


def test_a_world_writable_socket_dir_of_ours_is_refused_before_sending(reachable_home):
    run = reachable_home / "run"
    run.mkdir()
    os.chmod(run, 0o777)

    with FakeDaemon(run / "omnid.sock") as fake:
        out = attempt_status(autostart=False, timeout=10)

    assert fake.received == 0, out
    assert out["sync"] == "PermissionDenied" and out["async"] == "PermissionDenied", out
    assert "writable by others" in out["sync_message"] and "chmod go-w" in out["sync_message"], out


def test_a_server_of_another_uid_in_our_own_dir_is_refused_by_its_peer_credentials(reachable_home):
    run = reachable_home / "run"
    run.mkdir(mode=0o777)
    os.chmod(run, 0o777)
    with FakeDaemon(run / "omnid.sock") as fake:
        os.chmod(run, 0o700)  # the directory is beyond reproach now; the process behind it is not
        out = attempt_status(autostart=True, timeout=10)

    assert fake.received == 0, out
    assert out["sync"] == "PermissionDenied" and out["async"] == "PermissionDenied", out
    for message in (out["sync_message"], out["async_message"]):
        assert f"pid {fake.pid}" in message and f"runs as uid {NOBODY}" in message, message


def test_event_streams_check_the_server_before_subscribing(reachable_home):
    """Client.events and AsyncClient.events open connections of their own: through the
    same checks, so an impostor is refused before it is sent a hello or a subscription."""
    run = reachable_home / "run"
    run.mkdir(mode=0o777)
    os.chmod(run, 0o777)

    async def follow_async() -> None:
        async with AsyncClient(autostart=True, timeout=10) as c:
            async for _ in c.events():
                break

    with FakeDaemon(run / "omnid.sock") as fake:
        os.chmod(run, 0o700)
        with Client(autostart=True, timeout=10) as c, pytest.raises(PermissionDenied, match=f"pid {fake.pid}"):
            next(c.events())
        with pytest.raises(PermissionDenied, match=f"runs as uid {NOBODY}"):
            asyncio.run(follow_async())

    assert fake.received == 0


def test_the_daemon_refuses_to_bind_in_a_directory_it_does_not_own(reachable_home):
    run = reachable_home / "run"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)

    r = subprocess.run(
        [sys.executable, "-m", "omnid", "serve", "--log-file", str(reachable_home / "refused.log")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )

    assert r.returncode == 1, r
    assert str(run) in r.stderr and f"uid {NOBODY}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(run.iterdir()) == []


def test_a_daemon_never_takes_over_a_shared_sticky_directory_it_happens_to_own(home, monkeypatch):
    shared = home / "shared"  # what /tmp is to a daemon run as root
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setenv("OMNID_SOCKET", str(shared / "omnid.sock"))

    r = subprocess.run(
        [sys.executable, "-m", "omnid", "serve", "--log-file", str(home / "refused.log")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )

    assert r.returncode == 1 and "shared directory" in r.stderr and "Traceback" not in r.stderr, r
    assert stat.S_IMODE(os.lstat(shared).st_mode) == 0o1777, "the shared directory was made private"
    assert list(shared.iterdir()) == []


def test_a_home_too_deep_for_a_socket_gets_a_short_private_dir_named_in_the_status_file(
    monkeypatch, home, no_stray_daemons, start_daemon
):
    deep = home / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("OMNID_HOME", str(deep))
    assert len(os.fsencode(deep / "run" / "omnid.sock")) > 108
    first = second = None
    try:
        with Client(timeout=30, start_timeout=30) as c:  # a cold start: this client spawns it
            first = Path(c.status().socket)
        published = msgspec.json.decode((deep / "status.json").read_bytes())["socket"]
        st = os.lstat(first.parent)
        assert published == str(first)
        assert first.parent.parent == Path("/tmp") and first.parent.name.startswith("omnid-"), first
        assert len(first.parent.name) >= len("omnid-") + 16, "the name must be unguessable"
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.getuid(), 0o700)
        with Client(autostart=False) as c:
            c.shutdown()
        wait_for(lambda: not first.parent.exists(), what="the daemon to stop and remove its dir")

        crashed = start_daemon()
        with Client(autostart=False) as c:
            second = Path(c.status().socket)
        assert second.parent != first.parent and stat.S_IMODE(os.lstat(second.parent).st_mode) == 0o700
        crashed.kill()  # leaves its dir and its status file behind
        start_daemon()
        with Client(autostart=False) as c:
            assert c.status().socket == str(second), "a daemon after a crash reuses the dir it finds"
    finally:
        for sock in (first, second):
            if sock is not None:
                shutil.rmtree(sock.parent, ignore_errors=True)


def test_the_runtime_dir_is_used_only_when_it_is_the_users_own_private_dir():
    runtime = Path(f"/run/user/{NOBODY}")
    if os.path.lexists(runtime) or not runtime.parent.is_dir():
        pytest.skip(f"{runtime} is not ours to create here")
    env = {"OMNID_HOME": None, "OMNID_SOCKET": None}

    def where() -> list:
        return [str(daemon_paths().socket), [str(p) for p, _ in socket_candidates()]]

    runtime.mkdir(mode=0o700)
    try:
        os.chown(runtime, NOBODY, NOBODY)
        own = as_user(where, env=env)["ok"]
        os.chmod(runtime, 0o755)
        loose = as_user(where, env=env)["ok"]
        os.chmod(runtime, 0o700)
        os.chown(runtime, 0, 0)
        foreign = as_user(where, env=env)["ok"]
    finally:
        runtime.rmdir()

    state_socket = f"{pwd.getpwuid(NOBODY).pw_dir}/.local/state/omnid/run/omnid.sock"
    assert own[0] == f"{runtime}/omnid/omnid.sock"
    assert loose[0] == foreign[0] == state_socket
    for _, candidates in (own, loose, foreign):
        assert not any(c.startswith("/tmp/") for c in candidates), candidates


# --- 4: a refusal is a refusal -------------------------------------------------------------


def test_a_client_of_another_uid_is_told_permission_denied_not_not_running(daemon, reachable_home):
    for path, perms in ((daemon.socket.parent, 0o711), (daemon.socket, 0o777)):
        os.chmod(path, perms)  # nothing but the daemon itself stands in the stranger's way

    def stranger() -> dict:
        out = attempt_status(autostart=False, timeout=10)
        for key, args in (("cli", ["status"]), ("cli_json", ["status", "--json"])):
            r = CliRunner().invoke(main, args)
            out[key] = [r.exit_code, r.stdout, r.stderr]
        return out

    out = as_user(stranger)["ok"]

    assert out["sync"] == "PermissionDenied" and out["async"] == "PermissionDenied", out
    for message in (out["sync_message"], out["async_message"]):
        assert "permission denied" in message and f"uid {NOBODY}" in message, message
    status, stdout, stderr = out["cli"]
    assert status == 1 and "permission denied" in stderr and "not running" not in stdout + stderr, out["cli"]
    status, stdout, _ = out["cli_json"]
    assert status == 1 and msgspec.json.decode(stdout)["error"]["code"] == "permission", out["cli_json"]


# --- 10: fail open means fail open; no Unix sockets means Unsupported ------------------------

FAILING_SPAWN = """
import asyncio, json, sys
sys.executable = sys.argv[1]  # what the client starts the daemon with: not executable
from omnid_client import AsyncClient, Client

async def async_status(**options):
    async with AsyncClient(**options) as c:
        return await c.status()

out = {"sync": Client(fail_open=True, timeout=20).status(),
       "async": asyncio.run(async_status(fail_open=True, timeout=20))}
for name, call in (("sync_raises", lambda: Client(timeout=20).status()),
                   ("async_raises", lambda: asyncio.run(async_status(timeout=20)))):
    try:
        call()
        out[name] = "nothing"
    except Exception as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def test_fail_open_covers_a_spawn_that_fails(home, no_stray_daemons):
    not_executable = home / "python-that-cannot-run"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)

    r = subprocess.run(
        [sys.executable, "-c", FAILING_SPAWN, str(not_executable)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )

    assert r.returncode == 0, r.stderr
    out = msgspec.json.decode(r.stdout)
    assert out["sync"] is None and out["async"] is None, out
    for key in ("sync_raises", "async_raises"):
        kind, message = out[key]
        assert kind == "Unavailable" and "cannot start omnid" in message and "Permission denied" in message, out


NO_UNIX_SOCKETS = """
import _socket, json, socket, sys
del socket.AF_UNIX            # what Python on Windows lacks,
sys.modules["fcntl"] = None   # with these modules
sys.modules["pwd"] = None
pair = socket.socketpair      # which Windows emulates (over loopback TCP) for asyncio's loop
socket.socketpair = lambda family=_socket.AF_UNIX, *args: pair(family, *args)
import asyncio
import omnid_client
from omnid_client import AsyncClient, Client, Unsupported

async def async_call(**options):
    async with AsyncClient(**options) as c:
        return await c.get_or_create("tool")

out = {"sync_open": Client(fail_open=True).get_or_create("tool"),
       "async_open": asyncio.run(async_call(fail_open=True))}
for name, call in (("sync", lambda: Client().get_or_create("tool")),
                   ("async", lambda: asyncio.run(async_call())),
                   ("connect", lambda: Client().connect())):
    try:
        call()
        out[name] = "nothing"
    except Unsupported as e:
        out[name] = "Unsupported: " + str(e)
print(json.dumps(out))
"""


def test_without_unix_sockets_the_client_imports_and_every_call_is_unsupported(home):
    r = subprocess.run(
        [sys.executable, "-c", NO_UNIX_SOCKETS], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )

    assert r.returncode == 0, r.stderr
    out = msgspec.json.decode(r.stdout)
    assert out["sync_open"] is None and out["async_open"] is None, out
    for key in ("sync", "async", "connect"):
        assert out[key].startswith("Unsupported: ") and "Unix sockets" in out[key], out
    assert not list(home.iterdir()), "nothing was created"


# --- 15: timeout bounds the whole call ------------------------------------------------------


def assert_times_out_promptly(**options: Any) -> None:
    """Both clients raise Timeout for ``status()`` with ``timeout=0.5`` well within
    CALLS_BOUND, although ``options`` allow a minute for each step."""
    out = attempt_status(**{"timeout": 0.5, "connect_timeout": 60, "start_timeout": 60, **options})
    assert out["sync"] == "Timeout" and out["async"] == "Timeout", out
    assert out["sync_took"] < CALLS_BOUND and out["async_took"] < CALLS_BOUND, out


def test_timeout_bounds_connecting_to_a_wedged_daemon(daemon):
    with Client(autostart=False, timeout=30) as c:
        c.status()  # an answer: it is serving, its SIGTERM handler in place for the end
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        assert_times_out_promptly(autostart=False)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)


def test_timeout_bounds_connecting_to_a_socket_whose_backlog_is_full(home, monkeypatch):
    path = home / "full.sock"
    monkeypatch.setenv("OMNID_SOCKET", str(path))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(path))
    listener.listen(0)
    queued = []
    try:
        while len(queued) < 1000:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            queued.append(s)
            try:
                s.connect(os.fspath(path))
            except BlockingIOError:
                break
        else:
            pytest.fail("the backlog never filled")
        assert_times_out_promptly(autostart=False)
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_timeout_bounds_waiting_for_another_client_to_start_the_daemon(home, no_stray_daemons):
    fd = os.open(home / "spawn.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another client is starting omnid, and takes its time
        assert_times_out_promptly(autostart=True)
    finally:
        os.close(fd)
