"""Counters and fixed-bucket histograms the daemon keeps since it started, cheap enough
to bump on every request.

Every slot is allocated up front (one per known method, one for unknown methods), and
a request costs integer increments and one ``bisect`` on a fixed tuple of bucket bounds
in ``perf_counter_ns`` integers: nothing is allocated per request. Snapshots
(``DaemonMetrics``) are built on demand.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from time import perf_counter_ns
from typing import Callable

from omnid_client.protocol import (
    METHODS,
    Counts,
    DaemonMetrics,
    ErrorInfo,
    Histogram,
    MethodMetrics,
    reuse_rate,
)

from .. import clock
from ..store.events import Staged

NS = 1_000_000_000
LATENCY_BOUNDS_NS = (
    50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000,
    50_000_000, 100_000_000, 250_000_000, 500_000_000, 1_000_000_000,
)
"""Request latency and commit time buckets: 50 µs to 1 s."""
REAP_BOUNDS_NS = tuple(int(s * NS) for s in (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600))
"""Reap latency buckets: 1 ms (an exit event) to 10 minutes (a slow sweep)."""
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Group-commit batch size buckets, in writes per transaction."""
MAX_TOOLS = 64
"""Distinct tool ids counted apart; further ones are counted as "other" (tool ids come from clients)."""
UNKNOWN_METHOD = "unknown"
END_REASONS = ("ended", "reaped", "expired")


def enabled_from_env() -> bool:
    """False with ``OMNID_METRICS=off`` (or 0/false/no): for measuring what recording costs."""
    return os.environ.get("OMNID_METRICS", "").strip().lower() not in ("off", "0", "false", "no")


class Buckets:
    """One histogram: a count per bucket (the last is +Inf) and the sum, in integers."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[int, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0

    def observe(self, value: int, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times

    def snapshot(self, unit: int = 1) -> Histogram:
        return Histogram([b / unit for b in self.bounds], list(self.counts), self.total / unit)


class MethodSlot:
    """One method's replies: their latency histogram (whose count is the replies) and errors."""

    __slots__ = ("errors", "latency")

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.latency = Buckets(LATENCY_BOUNDS_NS)

    @property
    def requests(self) -> int:
        return sum(self.latency.counts)


Gauges = Callable[[], tuple[int, int, int, int]]
"""Live connections, watched owner processes, database bytes, WAL bytes: read on demand."""


class Metrics:
    """What the daemon counted since it started, and the totals of earlier runs."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.started_at = clock.wall()
        self._started_ns = perf_counter_ns()
        self._methods = {name: MethodSlot() for name in METHODS}
        self._unknown = MethodSlot()
        self.outcomes: dict[str, dict[str, int]] = {}
        self.sessions_ended = dict.fromkeys(END_REASONS, 0)
        self.reap_latency = {"event": Buckets(REAP_BOUNDS_NS), "sweep": Buckets(REAP_BOUNDS_NS)}
        self.commit_batch = Buckets(BATCH_BOUNDS)
        self.commit_time = Buckets(LATENCY_BOUNDS_NS)
        self.commit_failures = 0
        self.previous = Counts()
        """What earlier runs counted (loaded from the totals file)."""
        self.previous_since: float | None = None
        self.gauges: Gauges = lambda: (0, 0, 0, 0)

    # -- recording (the hot path) -------------------------------------------------------

    def answered(self, method: str, started_ns: int, error: ErrorInfo | None) -> None:
        """A reply to ``method`` was written, ``started_ns`` (``perf_counter_ns``) after its frame was decoded."""
        if self.enabled:
            elapsed = perf_counter_ns() - started_ns
            slot = self._methods.get(method) or self._unknown
            latency = slot.latency
            latency.counts[bisect_left(latency.bounds, elapsed)] += 1
            latency.total += elapsed
            if error is not None:
                slot.errors[error.code] = slot.errors.get(error.code, 0) + 1

    def outcome(self, tool_id: str, outcome: str) -> None:
        """A get_or_create call of ``tool_id`` was answered "created", "existing" or "resumed"."""
        if self.enabled:
            by_outcome = self.outcomes.get(tool_id) or self._new_tool(tool_id)
            by_outcome[outcome] += 1

    def _new_tool(self, tool_id: str) -> dict[str, int]:
        if len(self.outcomes) >= MAX_TOOLS:
            tool_id = "other"
        return self.outcomes.setdefault(tool_id, {"created": 0, "existing": 0, "resumed": 0})

    def committed(self, batch: int, nanos: int, events: list[Staged] | None) -> None:
        """A group commit of ``batch`` writes took ``nanos``, with these events staged
        (the sessions it ended among them); ``events`` None: it failed and undid the batch."""
        if not self.enabled:
            return
        if events is None:
            self.commit_failures += 1
            return
        self.commit_batch.observe(batch)
        self.commit_time.observe(nanos)
        ended = self.sessions_ended
        for event in events:
            if event.kind == "session.ended":
                reason = event.data.get("end_reason", "")
                if reason in ended:
                    ended[reason] += 1

    def reaped(self, via: str, nanos: int, sessions: int) -> None:
        """``sessions`` of one dead owner ended (committed) ``nanos`` after its death: exactly
        from the exit event (``via`` "event"), or at most (``via`` "sweep")."""
        if self.enabled:
            self.reap_latency[via].observe(nanos, sessions)

    # -- snapshots ------------------------------------------------------------------------

    def _all_methods(self) -> list[tuple[str, MethodSlot]]:
        return [*self._methods.items(), (UNKNOWN_METHOD, self._unknown)]

    def counts(self) -> Counts:
        """The counters since start (only what moved)."""
        slots = [(name, slot, n) for name, slot in self._all_methods() if (n := slot.requests)]
        return Counts(
            get_or_create={tool: dict(by) for tool, by in self.outcomes.items()},
            requests={name: n for name, _, n in slots},
            errors={name: dict(slot.errors) for name, slot, _ in slots if slot.errors},
            sessions_ended={reason: n for reason, n in self.sessions_ended.items() if n},
        )

    def totals(self, now: Counts | None = None) -> Counts:
        """The counters since start added to those of earlier runs."""
        now = now if now is not None else self.counts()
        before = self.previous
        return Counts(
            get_or_create=_add_nested(before.get_or_create, now.get_or_create),
            requests=_add(before.requests, now.requests),
            errors=_add_nested(before.errors, now.errors),
            sessions_ended=_add(before.sessions_ended, now.sessions_ended),
        )

    def snapshot(self) -> DaemonMetrics:
        counts = self.counts()
        totals = self.totals(counts)
        methods = {
            name: MethodMetrics(slot.requests, dict(slot.errors), slot.latency.snapshot(NS))
            for name, slot in self._all_methods()
            if slot.requests
        }
        connections, owners, db_bytes, wal_bytes = self.gauges()
        return DaemonMetrics(
            enabled=self.enabled,
            started_at=self.started_at,
            uptime=(perf_counter_ns() - self._started_ns) / NS,
            since_start=counts,
            reuse_rate=reuse_rate(counts.get_or_create),
            methods=methods,
            reap_latency={via: b.snapshot(NS) for via, b in self.reap_latency.items()},
            commit_batch=self.commit_batch.snapshot(),
            commit_seconds=self.commit_time.snapshot(NS),
            commit_failures=self.commit_failures,
            connections=connections,
            watched_owners=owners,
            database_bytes=db_bytes,
            wal_bytes=wal_bytes,
            totals=totals,
            totals_since=self.previous_since if self.previous_since is not None else self.started_at,
            total_reuse_rate=reuse_rate(totals.get_or_create),
        )


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


def _add_nested(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {key: dict(inner) for key, inner in a.items()}
    for key, inner in b.items():
        out[key] = _add(out.get(key, {}), inner)
    return out
