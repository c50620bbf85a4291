"""Soak: a real daemon under mixed load from several client processes for N minutes, its
RSS and open file descriptors sampled every few seconds. Fails (exit 1) if either grows
over the second half of the run beyond a stated tolerance, if the daemon dies, if a call
fails in a way it should not, or if the daemon logs a traceback.

    python bench/soak.py --minutes 10        # or: make soak

Each worker process keeps a few owner processes (``sleep``) with sessions, and loops over
get_or_create, heartbeat, messages, context, memories, search, summaries, lists, explicit
ends, fresh connections, and killing owners, whose sessions the daemon must reap.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent.parent
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


# --- load -------------------------------------------------------------------------------------


def worker(n: int, deadline: float, results: mp.Queue) -> None:
    from omnid_client import Client, NotFound, OmnidError
    from omnid_client.protocol import ContextEvent, NewMessage

    rng = random.Random(n)
    ops: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    owners: dict[int, subprocess.Popen] = {}
    sessions: dict[str, int] = {}  # live session id -> owner pid
    killed: list[tuple[str, float]] = []  # sessions whose owner we killed, and when
    workspace = f"/soak/w{n}"

    def new_owner() -> None:
        proc = subprocess.Popen(["sleep", "3600"])
        owners[proc.pid] = proc

    def some_session() -> str | None:
        return rng.choice(list(sessions)) if sessions else None

    with Client(autostart=False, timeout=30) as c:
        step = 0
        while time.monotonic() < deadline:
            step += 1
            if len(owners) < 5:
                new_owner()
            action = rng.choices(
                ["create", "heartbeat", "message", "context", "memory", "search", "read", "end", "kill", "reconnect"],
                weights=[10, 10, 15, 10, 8, 5, 10, 2, 2, 2],
            )[0]
            sid = some_session()
            try:
                if action == "create" or sid is None:
                    action = "create"
                    pid = rng.choice(list(owners))
                    got = c.get_or_create(f"soak-{rng.randrange(20)}", pid=pid, metadata={"worker": n, "step": step})
                    sessions[got.session.session_id] = pid
                elif action == "heartbeat":
                    c.heartbeat(sid)
                elif action == "message":
                    text = " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))
                    c.add_messages(sid, [NewMessage("user", text, tokens_used=rng.randint(0, 500))] * rng.randint(1, 3))
                elif action == "context":
                    kind = rng.choice(["file_access", "search", "decision", "file_change"])
                    c.append_context(sid, [ContextEvent(kind, f"src/{rng.choice(WORDS)}.py", importance=rng.random())])
                elif action == "memory":
                    key = f"k{rng.randrange(50)}"
                    if rng.random() < 0.5:
                        c.put_memory(key, {"v": step, "words": rng.choices(WORDS, k=5)}, workspace=workspace)
                    else:
                        try:
                            c.get_memory(key, workspace=workspace)
                            c.list_memories(workspace=workspace, limit=20)
                        except NotFound:  # no such key, or no memory in this project yet
                            pass
                elif action == "search":
                    c.search(rng.choice(WORDS), limit=10)
                elif action == "read":
                    rng.choice([
                        lambda sid=sid: c.get_context(sid),
                        lambda sid=sid: c.session_summary(sid),
                        lambda sid=sid: c.list_messages(sid, limit=50),
                        lambda: c.list_sessions(status="live", limit=50),
                        lambda: c.status(),
                    ])()
                elif action == "end":
                    c.end(sid)
                    sessions.pop(sid, None)
                elif action == "kill":
                    pid = rng.choice(list(owners))
                    proc = owners.pop(pid)
                    proc.kill()
                    proc.wait()
                    now = time.monotonic()
                    for s, owner in list(sessions.items()):
                        if owner == pid:
                            killed.append((s, now))
                            del sessions[s]
                elif action == "reconnect":
                    with Client(autostart=False, timeout=30) as fresh:
                        fresh.status()
                ops[action] += 1
            except OmnidError as e:
                code = getattr(e, "code", type(e).__name__)
                # Content on a session whose owner just died and was reaped: expected.
                if code == "conflict":
                    sessions.pop(sid, None)
                    ops[f"{action} (ended meanwhile)"] += 1
                else:
                    errors[f"{action}: {code}: {str(e)[:80]}"] += 1
            # Sessions of killed owners must be reaped within seconds (pidfd), not a sweep.
            while killed and time.monotonic() - killed[0][1] > 5:
                s, _ = killed.pop(0)
                if c.get(s).end_reason not in ("reaped", "ended"):
                    errors["a killed owner's session was not reaped within 5 s"] += 1
                else:
                    ops["reaped (verified)"] += 1
    for proc in owners.values():
        proc.kill()
        proc.wait()
    results.put((n, dict(ops), dict(errors)))


# --- the daemon and its samples --------------------------------------------------------------------


def start_daemon(home: Path) -> subprocess.Popen:
    log = home / "omnid.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", "serve", "--log-file", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    sock = home / "run" / "omnid.sock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the daemon exited with {proc.returncode}; see {log}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(sock))
            return proc
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    sys.exit(f"the daemon did not listen on {sock} within 30 s")


def sample(proc: psutil.Process, t0: float) -> dict:
    from omnid_client import Client

    with Client(autostart=False, timeout=30) as c:
        st = c.status()
    return {
        "t": time.monotonic() - t0,
        "rss": proc.memory_info().rss,
        "fds": proc.num_fds(),
        "conns": st.connections,
        "live": st.live_sessions,
        "watched": st.watched_processes,
        "db": st.database_bytes,
        "wal": st.wal_bytes,
    }


def growth(samples: list[dict], key: str) -> tuple[float, float]:
    """(growth over the span of ``samples`` by a least-squares line, value at its start)."""
    ts = [s["t"] for s in samples]
    ys = [s[key] for s in samples]
    slope = statistics.linear_regression(ts, ys).slope if len(set(ts)) > 1 else 0.0
    return slope * (ts[-1] - ts[0]), statistics.median(ys[: max(1, len(ys) // 4)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=4, help="client processes")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--rss-tolerance-mib", type=float, default=8.0, help="allowed RSS growth over the second half, MiB")
    ap.add_argument("--rss-tolerance-pct", type=float, default=10.0, help="... or this percentage, if larger")
    ap.add_argument("--fd-tolerance", type=int, default=8, help="allowed growth of open fds over the second half")
    ap.add_argument("--keep", action="store_true", help="keep the temporary OMNID_HOME")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="omnid-soak-", dir="/tmp"))
    os.environ["OMNID_HOME"] = str(home)
    os.environ.pop("OMNID_SOCKET", None)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE / "client"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    sys.path[:0] = [str(HERE), str(HERE / "client")]
    daemon = start_daemon(home)
    proc = psutil.Process(daemon.pid)
    duration = args.minutes * 60
    print(f"soak: {args.minutes:g} min, {args.workers} workers, daemon pid {daemon.pid}, OMNID_HOME {home}", flush=True)

    t0 = time.monotonic()
    deadline = t0 + duration
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=worker, args=(n, deadline, results)) for n in range(args.workers)]
    samples = []
    header = (
        f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'conns':>5} {'live':>6} {'watched':>7} {'db MiB':>7} {'wal MiB':>7}"
    )
    print(header, flush=True)
    failed: list[str] = []
    try:
        for w in workers:
            w.start()
        while time.monotonic() < deadline:
            time.sleep(min(args.every, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline - 0.5:
                break  # the workers are stopping: a sample now would not be under load
            if daemon.poll() is not None:
                failed.append(f"the daemon died (exit status {daemon.returncode})")
                break
            s = sample(proc, t0)
            samples.append(s)
            print(
                f"{s['t']:7.0f} {s['rss'] / 2**20:8.1f} {s['fds']:5d} {s['conns']:5d} {s['live']:6d} {s['watched']:7d} "
                f"{s['db'] / 2**20:7.1f} {s['wal'] / 2**20:7.1f}",
                flush=True,
            )
        collected = [results.get(timeout=120) for _ in workers]
        for w in workers:
            w.join(30)
    finally:
        for w in workers:
            if w.pid is not None and w.is_alive():
                w.kill()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                failed.append("the daemon did not stop within 30 s of SIGTERM")

    ops: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for _n, o, e in collected:
        ops.update(o)
        errors.update(e)
    total = sum(v for k, v in ops.items() if "verified" not in k)
    print(f"\n{total} calls ({total / duration:.0f}/s): " + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
    if errors:
        failed.append("unexpected errors: " + "; ".join(f"{k} x{v}" for k, v in errors.most_common(10)))
    if daemon.returncode not in (0, None):
        failed.append(f"the daemon exited with {daemon.returncode} on SIGTERM")
    log = (home / "omnid.log").read_text()
    if "Traceback" in log:
        failed.append(f"the daemon logged a traceback (see {home / 'omnid.log'})")

    second_half = [s for s in samples if s["t"] >= duration / 2]
    if len(second_half) >= 4:
        rss_growth, rss_mid = growth(second_half, "rss")
        fd_growth, fds_mid = growth(second_half, "fds")
        rss_limit = max(args.rss_tolerance_mib * 2**20, rss_mid * args.rss_tolerance_pct / 100)
        print(
            f"second half: RSS {rss_mid / 2**20:.1f} MiB, trend {rss_growth / 2**20:+.2f} MiB "
            f"(allowed {rss_limit / 2**20:.1f}); "
            f"fds {fds_mid:.0f}, trend {fd_growth:+.1f} (allowed {args.fd_tolerance})"
        )
        if rss_growth > rss_limit:
            failed.append(f"RSS grew by {rss_growth / 2**20:.1f} MiB over the second half")
        if fd_growth > args.fd_tolerance:
            failed.append(f"open fds grew by {fd_growth:.1f} over the second half")
    else:
        failed.append(f"only {len(second_half)} samples in the second half: run longer or sample more often")

    if args.keep or failed:
        print(f"kept {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    for f in failed:
        print(f"FAIL: {f}")
    print("PASS" if not failed else "FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
