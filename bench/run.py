"""omnid benchmarks: latency, throughput, reaping and scale, each against baselines
measured in the same run on the same machine. Prints one table and writes it as JSON.

    python bench/run.py [--seconds 3] [--out bench-results.json] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import agent
import bigdb
import floor
import msgspec
import psutil
import wakeups

HERE = Path(__file__).resolve().parent
LOAD = HERE / "load.py"


# --- processes under test ------------------------------------------------------------


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
            return
        except OSError:
            time.sleep(0.02)
        finally:
            s.close()
    raise SystemExit(f"nothing listens on {path}")


@contextmanager
def omnid_daemon(home: Path, **extra_env: str) -> Iterator[psutil.Process]:
    env = {**os.environ, "OMNID_HOME": str(home), **extra_env}
    env.pop("OMNID_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnid", "serve", "--log-file", str(home / "omnid.log")],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_socket(home / "run" / "omnid.sock", proc)
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@contextmanager
def echo_server(path: Path, script: str = "echo_server.py") -> Iterator[int]:
    """The echo floor (or, with ``script="floor.py"``, the raw echo floor); yields its pid."""
    proc = subprocess.Popen([sys.executable, str(HERE / script), str(path)], stdout=subprocess.DEVNULL)
    try:
        wait_for_socket(path, proc)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def baseline_server(workdir: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "baseline_app.py"), str(port), str(workdir / "baseline.db")],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the baseline service did not start (is the bench extra installed?)") from None
                time.sleep(0.05)
        yield str(port)
    finally:
        proc.kill()
        proc.wait()


# --- load --------------------------------------------------------------------------


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def run_clients(target: str, op: str, clients: int, seconds: float, arg: str, env: dict, workdir: Path) -> list:
    """``clients`` processes of bench/load.py run ``op`` for ``seconds``, all started at
    once; returns what each recorded."""
    go_r, go_w = os.pipe()
    procs, outs = [], []
    try:
        for i in range(clients):
            out = workdir / f"lat-{target}-{op}-{clients}-{i}.msgpack"
            outs.append(out)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(LOAD), target, op, str(seconds), str(go_r), str(out), arg],
                    pass_fds=(go_r,),
                    stdout=subprocess.PIPE,
                    env=env,
                )
            )
        for proc in procs:
            line = proc.stdout.readline()
            if line.strip() != b"ready":
                raise SystemExit(f"load client for {target}/{op} failed to start")
    finally:
        os.close(go_r)
        os.close(go_w)  # go
    for proc in procs:
        if proc.wait(seconds + 120) != 0:
            raise SystemExit(f"load client for {target}/{op} exited with {proc.returncode}")
        proc.stdout.close()
    recorded = [msgspec.msgpack.decode(out.read_bytes()) for out in outs]
    for out in outs:
        out.unlink()
    return recorded


def summary(target: str, op: str, clients: int, seconds: float, per_client: list[list[int]]) -> dict:
    latencies = sorted(x for client in per_client for x in client)
    return {
        "target": target,
        "op": op,
        "clients": clients,
        "ops": len(latencies),
        "throughput": len(latencies) / seconds,
        "p50_us": percentile(latencies, 0.50) / 1000,
        "p99_us": percentile(latencies, 0.99) / 1000,
    }


def run_load(target: str, op: str, clients: int, seconds: float, arg: str, env: dict, workdir: Path) -> dict:
    return summary(target, op, clients, seconds, run_clients(target, op, clients, seconds, arg, env, workdir))


@contextmanager
def pinned(pids: list[int], env: dict) -> Iterator[dict]:
    """Servers on CPU 0 and the one latency client (given the env yielded) on CPU 1, so the
    scheduler's placement does not move a p50 from run to run; all CPUs again after."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield env
        return
    for pid in pids:
        os.sched_setaffinity(pid, {cpus[0]})
    try:
        yield {**env, "OMNID_BENCH_CPU": str(cpus[1])}
    finally:
        for pid in pids:
            with suppress_gone():
                os.sched_setaffinity(pid, set(cpus))


@contextmanager
def suppress_gone() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


def run_paired(op: str, seconds: float, echo_path: Path, raw_path: Path, env: dict, workdir: Path) -> dict:
    """One client calling omnid's ``op``, the echo floor and the raw echo floor in turn (see load.py)."""
    (both,) = run_clients("paired", op, 1, seconds, f"{echo_path}{os.pathsep}{raw_path}", env, workdir)
    omnid, echo, raw = (
        summary(name, op if name == "omnid" else name, 1, seconds, [both[name]]) for name in ("omnid", "echo", "raw")
    )
    return {
        "op": op, "omnid": omnid, "echo": echo, "raw": raw,
        "ratio": omnid["p50_us"] / echo["p50_us"], "ratio_raw": omnid["p50_us"] / raw["p50_us"],
    }


def hot_path(
    work: Path, daemon: psutil.Process, sec: float, env: dict, loads: list[dict], counts: tuple[int, ...], calls: int
) -> dict:
    """omnid's hot calls beside the echo floor and the raw echo floor, in the same run: one
    pinned client calling all three in turn, the daemon's CPU per call, and 1..64 clients
    of each (reuse and message.add for omnid) one after the other at each count."""
    echo_path, raw_path = work / "echo.sock", work / "raw.sock"
    out: dict = {}
    with echo_server(echo_path) as echo_pid, echo_server(raw_path, "floor.py") as raw_pid:
        with pinned([daemon.pid, echo_pid, raw_pid], env) as penv:
            out["paired"] = run_paired("reuse", 2 * sec, echo_path, raw_path, penv, work)
        out["cpu_us"] = floor.daemon_cpu(daemon.pid, raw_pid, str(raw_path), calls)
        for clients in counts:
            loads.append(run_load("echo", "echo", clients, sec, str(echo_path), dict(os.environ), work))
            loads.append(run_load("raw", "echo", clients, sec, str(raw_path), dict(os.environ), work))
            for op in ("reuse", "message"):
                loads.append(run_load("omnid", op, clients, sec, "", env, work))
    return out


def floor_targets(r: dict) -> list[tuple[str, float, str, float]]:
    """The issue 16 goals: omnid against the raw echo floor measured in the same run."""
    loads, cpu = r["loads"], r["cpu_us"]
    raw16, reuse16, msg16 = (
        find(loads, t, op, 16) for t, op in (("raw", "echo"), ("omnid", "reuse"), ("omnid", "message"))
    )
    return [
        ("reuse p50 over the raw echo floor's (paired)", r["paired"]["ratio_raw"], "<=", 1.3),
        ("daemon CPU per reuse/get/find (worst, us)", max(cpu["reuse"], cpu["get"], cpu["find"]), "<=", 40),
        ("16-client reuse throughput over the raw floor's", reuse16["throughput"] / raw16["throughput"], ">=", 0.8),
        ("16-client reuse p99 over the raw floor's", reuse16["p99_us"] / raw16["p99_us"], "<=", 1.5),
        ("daemon CPU per message.add / context.append (worst, us)",
         max(cpu["message.add"], cpu["context.append"]), "<=", 100),
        ("16-client message.add throughput over the raw floor's reuse",
         msg16["throughput"] / raw16["throughput"], ">=", 0.35),
        ("16-client message.add p99 over the raw floor's", msg16["p99_us"] / raw16["p99_us"], "<=", 4),
    ]


def big_reads(work: Path, args: argparse.Namespace, sessions: int) -> dict:
    """context.get / sessions list and search on big databases against fresh ones."""
    rounds = 10 if args.quick else 30
    shrink = 10 if args.quick else 1
    return {
        "reads": bigdb.reads_at_scale(work, omnid_daemon, sessions, args.events, rounds),
        "search": bigdb.search_at_scale(
            work, omnid_daemon, args.messages // shrink, args.memories // shrink, rounds
        ),
    }


def scale_targets(r: dict) -> list[tuple[str, float, str, float]]:
    rd, se = r["reads"], r["search"]
    return [
        (f"search p50 with {se['messages']:,} messages and {se['memories']:,} memories (ms)",
         se["full_p50_ms"], "<=", 10),
        (f"context.get at {rd['events']:,} events over fresh", rd["context_get_ratio"], "<=", 1.2),
        (f"sessions list at {rd['sessions']:,} sessions over fresh", rd["sessions_list_ratio"], "<=", 1.2),
    ]


def print_scale(r: dict) -> None:
    rd, se = r["reads"], r["search"]
    print(
        f"reads (p50, alternating rounds): context.get {rd['context_get_fresh_ms']:.2f} ms fresh vs "
        f"{rd['context_get_full_ms']:.2f} ms at {rd['events']:,} events ({rd['context_get_ratio']:.2f}x); "
        f"sessions list {rd['sessions_list_fresh_ms']:.2f} vs {rd['sessions_list_full_ms']:.2f} ms at "
        f"{rd['sessions']:,} sessions ({rd['sessions_list_ratio']:.2f}x)"
    )
    print(
        f"search (p50 over {', '.join(repr(q) for q in bigdb.COMMON)}): {se['empty_p50_ms']:.2f} ms empty vs "
        f"{se['full_p50_ms']:.2f} ms with {se['messages']:,} messages and {se['memories']:,} memories "
        f"(built in {se['build_s']:.0f} s); per query: "
        + ", ".join(f"{q!r} {se[q]['full']:.1f}" for q in bigdb.COMMON)
    )


def scale_only(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="omnid-bench-", dir="/tmp"))
    try:
        results = big_reads(work, args, args.sessions)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_scale(results)
    report_targets(scale_targets(results))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def floor_only(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="omnid-bench-", dir="/tmp"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    loads: list[dict] = []
    try:
        home = work / "home"
        home.mkdir()
        env = {**os.environ, "OMNID_HOME": str(home)}
        os.environ["OMNID_HOME"] = str(home)
        with omnid_daemon(home) as daemon:
            results.update(hot_path(work, daemon, args.seconds, env, loads, (1, 16), args.calls))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loads"] = loads
    print_loads(results)
    print_floor(results)
    report_targets(floor_targets(results))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report_targets(targets: list[tuple[str, float, str, float]]) -> list[dict]:
    ops = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__}
    judged = [
        {"target": name, "value": float(value), "goal": f"{op} {goal}", "met": ops[op](float(value), float(goal))}
        for name, value, op, goal in targets
    ]
    for t in judged:
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:.2f} (goal {t['goal']})")
    return judged


# --- individual figures --------------------------------------------------------------


def reap_latency(home: Path, kills: int) -> dict:
    """Wall time from SIGKILL of an owner to its session's ended_at (both on this clock)."""
    from omnid_client import Client

    delays = []
    with Client(autostart=False) as client:
        for _ in range(kills):
            owner = subprocess.Popen(["sleep", "600"])
            sid = client.get_or_create("bench-reap", pid=owner.pid).session.session_id
            killed_at = time.time()
            owner.kill()
            owner.wait()
            while (s := client.get(sid)).ended_at is None:
                time.sleep(0.001)
            assert s.end_reason == "reaped"
            delays.append(max(0.0, s.ended_at - killed_at) * 1000)
    return {"kills": kills, "median_ms": statistics.median(delays), "max_ms": max(delays)}


def metrics_overhead(work: Path, seconds: float, rounds: int) -> dict:
    """Reuse p50 of one client calling two daemons in turn, one recording metrics and one
    with OMNID_METRICS=off (so both see the same moments of a noisy machine, and each goes
    first in every other call pair): the median of each side's per-round p50, and their ratio.
    The client reaches the two daemons differently (one through its environment, one by a
    socket path), which alone skews the pair by several percent, so half the rounds swap which
    daemon records. Beside it, the recording calls' own cost timed in process (``added_us``),
    as a share of the off side's p50: the figure the 2% goal is judged on, because a
    pair of daemons on a shared 2-core machine cannot resolve 2% end to end."""
    p50s: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for phase, (env_side, path_side) in enumerate((("on", "off"), ("off", "on"))):
        homes = {env_side: work / f"metrics-{phase}-env", path_side: work / f"metrics-{phase}-path"}
        for home in homes.values():
            home.mkdir()
        env = {**os.environ, "OMNID_HOME": str(homes[env_side])}
        switch = {side: ({} if side == "on" else {"OMNID_METRICS": "off"}) for side in homes}
        with omnid_daemon(homes[env_side], **switch[env_side]) as env_daemon, \
                omnid_daemon(homes[path_side], **switch[path_side]) as path_daemon:
            daemons = {env_side: env_daemon, path_side: path_daemon}
            path_socket = str(homes[path_side] / "run" / "omnid.sock")
            for _ in range(max(1, rounds // 2)):
                (both,) = run_clients("metrics", "reuse", 1, seconds, path_socket, env, work)
                by_side = {env_side: both["on"], path_side: both["off"]}  # load.py's names: env, then path
                for side in p50s:
                    p50s[side].append(summary("omnid", "reuse", 1, seconds, [by_side[side]])["p50_us"])
            for side, got in daemon_cpu_per_reuse(daemons, homes).items():
                cpu[side] += got
    on, off = statistics.median(p50s["on"]), statistics.median(p50s["off"])
    added = recording_cost_us()
    return {
        "rounds": len(p50s["on"]), "p50_on_us": on, "p50_off_us": off, "ratio": on / off, "per_round": p50s,
        "added_us": added, "added_share": added / off,
        "cpu_on_us": statistics.median(cpu["on"]), "cpu_off_us": statistics.median(cpu["off"]),
    }


def daemon_cpu_per_reuse(daemons: dict[str, psutil.Process], homes: dict[str, Path], calls: int = 3000) -> dict:
    """Each daemon's CPU (user + system, from /proc) per get_or_create reuse, in alternating runs."""
    from omnid_client import Client

    clients = {side: Client(socket_path=homes[side] / "run" / "omnid.sock", autostart=False) for side in homes}
    got: dict[str, list[float]] = {side: [] for side in homes}
    try:
        for run_no in range(4):
            for side in sorted(homes, reverse=bool(run_no % 2)):
                reuse = functools.partial(clients[side].get_or_create, "bench-tool")
                got[side].append(floor.cpu_per_call(daemons[side].pid, reuse, calls))
    finally:
        for client in clients.values():
            client.close()
    return got


def recording_cost_us(calls: int = 200_000) -> float:
    """Microseconds the daemon's recording calls for one get_or_create reply take, in process."""
    from omnid.metrics import Metrics

    metrics = Metrics(enabled=True)
    started = time.perf_counter_ns()
    for _ in range(calls):
        metrics.outcome("bench-tool", "existing")
        metrics.answered("session.get_or_create", time.perf_counter_ns(), None)
    return (time.perf_counter_ns() - started) / calls / 1000


def context_at_scale(work: Path, seconds: float, events: int) -> dict:
    """context.append p50 (one client) in a fresh session and in one already holding
    ``events`` events, both owned by this process and in the same database."""
    from omnid_client import Client

    home = work / "scale-context"
    home.mkdir()
    env = {**os.environ, "OMNID_HOME": str(home)}
    with omnid_daemon(home), Client(home / "run" / "omnid.sock", autostart=False) as client:
        fresh, full = (client.get_or_create(f"bench-scale-{n}", dedup=False).session.session_id for n in (1, 2))
    bigdb.fill_context(home, full, events)
    with omnid_daemon(home):
        fresh_p50 = run_load("omnid", "context", 1, seconds, fresh, env, work)["p50_us"]
        full_p50 = run_load("omnid", "context", 1, seconds, full, env, work)["p50_us"]
    return {"events": events, "fresh_p50_us": fresh_p50, "full_p50_us": full_p50}


def watched_rss(home: Path, sessions: int, owners: int) -> dict:
    """Daemon RSS before and after ``sessions`` live sessions spread over ``owners`` processes."""
    from omnid_client import Client

    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(owners)]
    try:
        with omnid_daemon(home) as daemon, Client(autostart=False, timeout=30) as client:
            client.connect()
            before = daemon.memory_info().rss
            per_owner = sessions // owners
            for proc in procs:
                for t in range(per_owner):
                    client.get_or_create(f"tool-{t}", pid=proc.pid)
            st = client.status()
            after = daemon.memory_info().rss
            idle, wakeups = idle_cpu(daemon, IDLE_SECONDS)
            return {
                "live_sessions": st.live_sessions,
                "watched_processes": st.watched_processes,
                "rss_empty_mb": before / 2**20,
                "rss_mb": after / 2**20,
                "idle_cpu_s_per_min": idle,
                "idle_wakeups_per_min": wakeups,
                "sweeps_per_min": 60 / st.settings.sweep_interval,
            }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


IDLE_SECONDS = 60.0


def idle_cpu(daemon: psutil.Process, seconds: float) -> tuple[float, float]:
    """CPU seconds per minute and wakeups per minute (context switches of all the daemon's
    threads, from /proc/PID/task/*/status) of an idle daemon."""
    time.sleep(2)  # let the last replies and commits settle
    t0, s0 = sum(daemon.cpu_times()[:2]), context_switches(daemon.pid)
    time.sleep(seconds)
    used, switches = sum(daemon.cpu_times()[:2]) - t0, context_switches(daemon.pid) - s0
    return used * 60 / seconds, switches * 60 / seconds


def context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        total += sum(int(line.split()[1]) for line in text.splitlines() if "ctxt_switches:" in line)
    return total


HOOK_EVENT = json.dumps(
    {"session_id": "bench", "cwd": "/tmp", "hook_event_name": "PostToolUse", "tool_name": "Read",
     "tool_input": {"file_path": "/tmp/bench.py"}}
).encode()


def hot_commands(rounds: int, env: dict) -> dict:
    """Median wall time (ms) of each command that runs on a prompt or a hook, and of a bare
    interpreter, measured in alternating rounds so load swings hit them all alike."""
    omnid = [shutil.which("omnid")] if shutil.which("omnid") else [sys.executable, "-m", "omnid"]
    cwd_session = subprocess.run(
        omnid + ["shell", "start", "bash", "--pid", str(os.getpid())],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    commands: dict[str, tuple[list[str], bytes]] = {
        "python_pass": ([sys.executable, "-c", "pass"], b""),
        "import_omnid_client": ([sys.executable, "-c", "import omnid_client"], b""),
        "import_client_class": ([sys.executable, "-c", "from omnid_client import Client"], b""),
        "status": (omnid + ["status"], b""),
        "session_start": (omnid + ["session", "start", "--tool", "bench-hot"], b""),
        "hook": (omnid + ["hook"], HOOK_EVENT),
        "shell_cd": (omnid + ["shell", "cd", cwd_session, "/tmp"], b""),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, (argv, stdin) in commands.items():
            t0 = time.perf_counter()
            subprocess.run(
                argv, env=env, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            )
            times[name].append((time.perf_counter() - t0) * 1000)
    medians = {f"{name}_ms": statistics.median(t) for name, t in times.items()}
    base = medians["python_pass_ms"]
    medians["ratios"] = {name: medians[f"{name}_ms"] / base for name in commands if name != "python_pass"}
    return medians


# --- the run -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load run")
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--quick", action="store_true", help="smaller scale figures, for a smoke run")
    parser.add_argument(
        "--only", choices=["agent", "wakeups", "floor", "scale", "metrics"],
        help="run only this group (agent: context pack, compaction; wakeups: idle wakeups, workspace tracking; "
        "floor: omnid beside the echo floors, daemon CPU per call; scale: reads and search on big databases; "
        "metrics: what recording metrics costs)",
    )
    parser.add_argument("--sessions", type=int, default=1_000_000, help="ended sessions in the big database")
    parser.add_argument("--events", type=int, default=100_000, help="context events of one session, ditto")
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages in the big search database")
    parser.add_argument("--memories", type=int, default=100_000, help="memories in the big search database")
    parser.add_argument("--calls", type=int, default=5000, help="calls per round when counting daemon CPU per call")
    args = parser.parse_args()
    if args.only == "floor":
        return floor_only(args)
    if args.only == "scale":
        return scale_only(args)
    if args.only == "metrics":
        work = Path(tempfile.mkdtemp(prefix="omnid-bench-", dir="/tmp"))
        try:
            overhead = metrics_overhead(work, args.seconds, 6 if args.quick else 10)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_overhead(overhead)
        return 0
    if args.only:
        group = {"agent": agent, "wakeups": wakeups}[args.only]
        work = Path(tempfile.mkdtemp(prefix="omnid-bench-", dir="/tmp"))
        try:
            if args.only == "agent":
                results = {"agent": agent.run(work, omnid_daemon, quick=args.quick)}
            else:
                results = {"wakeups": wakeups.run(work, omnid_daemon, seconds=10.0 if args.quick else 20.0)}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        group.report(results)
        ops = {"<=": float.__le__, ">=": float.__ge__}
        for name, value, op, goal in group.targets(results):
            verdict = "met" if ops[op](float(value), float(goal)) else "MISSED"
            print(f"  [{verdict}] {name}: {value:.2f} (goal {op} {goal})")
        return 0
    global IDLE_SECONDS
    scale_sessions = 100_000 if args.quick else args.sessions
    IDLE_SECONDS = 10.0 if args.quick else 60.0

    work = Path(tempfile.mkdtemp(prefix="omnid-bench-", dir="/tmp"))
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    results: dict = {"machine": machine}
    loads: list[dict] = []
    sec = args.seconds
    try:
        with baseline_server(work) as port:
            loads.append(run_load("baseline", "get_or_create", 1, sec, port, dict(os.environ), work))
            loads.append(run_load("baseline", "get_or_create", 16, sec, port, dict(os.environ), work))

        home = work / "home"
        home.mkdir()
        env = {**os.environ, "OMNID_HOME": str(home)}
        os.environ["OMNID_HOME"] = str(home)  # for the clients in this process
        with omnid_daemon(home) as daemon:
            results.update(hot_path(work, daemon, sec, env, loads, (1, 16, 64), args.calls))
            for op, counts in (("create", (1,)), ("context", (1, 16, 64))):
                for clients in counts:
                    loads.append(run_load("omnid", op, clients, sec, "", env, work))
            results["reap"] = reap_latency(home, 50)
        results["loads"] = loads

        # Scale: the same single-client calls against an empty and a full database.
        scale = {}
        for label, count in (("empty", 0), ("full", scale_sessions)):
            shome = work / f"scale-{label}"
            shome.mkdir()
            senv = {**os.environ, "OMNID_HOME": str(shome)}
            with omnid_daemon(shome):
                pass  # creates the schema
            if count:
                bigdb.fill_sessions(shome, count)
            with omnid_daemon(shome):
                scale[label] = {
                    op: run_load("omnid", op, 1, sec, "", senv, work)["p50_us"] for op in ("reuse", "create")
                }
            scale[label]["sessions"] = count
        scale["context"] = context_at_scale(work, sec, 100_000)
        results["scale"] = scale
        results.update(big_reads(work, args, scale_sessions))
        results["agent"] = agent.run(work, omnid_daemon, quick=args.quick)
        results["wakeups"] = wakeups.run(work, omnid_daemon, seconds=10.0 if args.quick else 20.0)
        results["metrics"] = metrics_overhead(work, sec, 6 if args.quick else 10)

        rss_home = work / "rss"
        rss_home.mkdir()
        os.environ["OMNID_HOME"] = str(rss_home)
        results["watched"] = watched_rss(rss_home, 10_000, 200)

        status_home = work / "status"
        status_home.mkdir()
        cenv = {**os.environ, "OMNID_HOME": str(status_home)}
        with omnid_daemon(status_home):
            results["startup"] = hot_commands(11 if args.quick else 31, cenv)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results["ratios"], results["targets"] = judge(results)
    print_report(results)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def find(loads: list[dict], target: str, op: str, clients: int) -> dict:
    return next(x for x in loads if (x["target"], x["op"], x["clients"]) == (target, op, clients))


def judge(r: dict) -> tuple[dict, list[dict]]:
    loads = r["loads"]
    echo1 = find(loads, "echo", "echo", 1)
    base1, base16 = find(loads, "baseline", "get_or_create", 1), find(loads, "baseline", "get_or_create", 16)
    reuse1, reuse16 = find(loads, "omnid", "reuse", 1), find(loads, "omnid", "reuse", 16)
    ratios = {
        "omnid_p50_over_echo_p50_paired": r["paired"]["ratio"],
        "omnid_p50_over_raw_echo_p50_paired": r["paired"]["ratio_raw"],
        "omnid_p50_over_echo_p50_separate": reuse1["p50_us"] / echo1["p50_us"],
        "baseline_p50_over_omnid_p50": base1["p50_us"] / reuse1["p50_us"],
        "omnid_over_baseline_throughput_16": reuse16["throughput"] / base16["throughput"],
        "full_over_empty_p50_reuse": r["scale"]["full"]["reuse"] / r["scale"]["empty"]["reuse"],
        "full_over_empty_p50_create": r["scale"]["full"]["create"] / r["scale"]["empty"]["create"],
        "full_over_fresh_p50_context_append": (
            r["scale"]["context"]["full_p50_us"] / r["scale"]["context"]["fresh_p50_us"]
        ),
    }
    worst_p99_16 = max(find(loads, "omnid", op, 16)["p99_us"] for op in ("reuse", "context", "message"))
    targets = [
        (
            "get_or_create p50 within 1.5x of the echo floor (paired)",
            ratios["omnid_p50_over_echo_p50_paired"], "<=", 1.5,
        ),
        ("p50 at least 10x lower than the baseline peer", ratios["baseline_p50_over_omnid_p50"], ">=", 10),
        ("throughput at 16 clients at least 20x the baseline", ratios["omnid_over_baseline_throughput_16"], ">=", 20),
        ("p99 at 16 clients under 2 ms (worst op, us)", worst_p99_16, "<", 2000),
        ("reap latency median under 100 ms", r["reap"]["median_ms"], "<", 100),
        (
            "1M-session get_or_create p50 within 1.2x of empty",
            max(ratios["full_over_empty_p50_reuse"], ratios["full_over_empty_p50_create"]), "<=", 1.2,
        ),
        ("idle CPU under 0.1 s per minute (10k sessions)", r["watched"]["idle_cpu_s_per_min"], "<", 0.1),
        *floor_targets(r),
        *scale_targets(r),
        *agent.targets(r),
        *wakeups.targets(r),
        ("metrics recording per get_or_create, share of reuse p50", r["metrics"]["added_share"], "<=", 0.02),
        (
            "import omnid_client over a bare interpreter (ms)",
            r["startup"]["import_omnid_client_ms"] - r["startup"]["python_pass_ms"], "<=", 15,
        ),
    ] + [
        (f"omnid {name.replace('_', ' ')} / python -c pass", r["startup"]["ratios"][name], "<=", 3)
        for name in ("status", "session_start", "hook", "shell_cd")
    ]
    ops = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__}
    return ratios, [
        {"target": name, "value": float(value), "goal": f"{op} {goal}", "met": ops[op](float(value), float(goal))}
        for name, value, op, goal in targets
    ]


def print_overhead(m: dict) -> None:
    print(
        f"metrics: reuse p50 {m['p50_on_us']:.1f} us recording vs {m['p50_off_us']:.1f} us with OMNID_METRICS=off "
        f"(one client calling both in turn, median of {m['rounds']} rounds, sides swapped halfway): {m['ratio']:.3f}x; "
        "per-round p50 spread "
        + ", ".join(f"{side} {min(v):.1f}-{max(v):.1f} us" for side, v in m["per_round"].items())
        + f"; daemon CPU per reuse {m['cpu_on_us']:.1f} us recording vs {m['cpu_off_us']:.1f} us off"
        + f"; the recording calls themselves: {m['added_us']:.2f} us a call = {m['added_share']:.1%} of that p50"
    )


def print_loads(r: dict) -> None:
    print(f"{'target':9} {'op':14} {'clients':>7} {'ops':>8} {'ops/s':>9} {'p50 us':>9} {'p99 us':>9}")
    for x in r["loads"]:
        print(
            f"{x['target']:9} {x['op']:14} {x['clients']:>7} {x['ops']:>8} {x['throughput']:>9.0f} "
            f"{x['p50_us']:>9.1f} {x['p99_us']:>9.1f}"
        )


def print_floor(r: dict) -> None:
    pr = r["paired"]
    print(
        f"\npaired, one pinned client calling all three in turn: {pr['op']} p50 {pr['omnid']['p50_us']:.1f} us "
        f"(p99 {pr['omnid']['p99_us']:.1f}), echo floor p50 {pr['echo']['p50_us']:.1f} us "
        f"(p99 {pr['echo']['p99_us']:.1f}), raw echo floor p50 {pr['raw']['p50_us']:.1f} us "
        f"(p99 {pr['raw']['p99_us']:.1f}): {pr['ratio']:.2f}x the echo, {pr['ratio_raw']:.2f}x the raw floor "
        f"over {pr['omnid']['ops']} calls each"
    )
    print("daemon CPU per call (us, median of alternating rounds): " + ", ".join(
        f"{name} {us:.0f}" for name, us in r["cpu_us"].items()
    ))


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"omnid benchmarks — {m['cpus']} CPUs, Python {m['python']}, {m['platform']}\n")
    print_loads(r)
    print_floor(r)
    rp = r["reap"]
    print(f"reap latency over {rp['kills']} kill -9: median {rp['median_ms']:.1f} ms, max {rp['max_ms']:.1f} ms")
    sc = r["scale"]
    print(
        f"scale: p50 reuse {sc['empty']['reuse']:.1f} us empty vs {sc['full']['reuse']:.1f} us "
        f"with {sc['full']['sessions']:,} sessions; "
        f"create {sc['empty']['create']:.1f} vs {sc['full']['create']:.1f} us"
    )
    cx = sc["context"]
    print(
        f"scale: p50 context.append {cx['fresh_p50_us']:.1f} us in a fresh session vs {cx['full_p50_us']:.1f} us "
        f"in one holding {cx['events']:,} events"
    )
    print_scale(r)
    agent.report(r)
    wakeups.report(r)
    print_overhead(r["metrics"])
    w = r["watched"]
    print(
        f"watched: {w['live_sessions']:,} live sessions on {w['watched_processes']} processes: "
        f"RSS {w['rss_mb']:.1f} MiB "
        f"(empty {w['rss_empty_mb']:.1f} MiB); idle CPU {w['idle_cpu_s_per_min']:.3f} s/min, "
        f"{w['idle_wakeups_per_min']:.1f} wakeups/min (sweeps {w['sweeps_per_min']:.1f}/min)"
    )
    s = r["startup"]
    print(f"startup (median of alternating rounds): python -c pass {s['python_pass_ms']:.0f} ms; " + ", ".join(
        f"{name.replace('_', ' ')} {s[name + '_ms']:.0f} ms ({ratio:.2f}x)" for name, ratio in s["ratios"].items()
    ))
    print("\nratios:")
    for name, value in r["ratios"].items():
        print(f"  {name:40} {value:8.2f}")
    print("\ntargets:")
    for t in r["targets"]:
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:.2f} (goal {t['goal']})")


if __name__ == "__main__":
    sys.exit(main())
