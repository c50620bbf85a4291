"""The daemon's metrics snapshot (``daemon.metrics``): counters and histograms kept since it started."""

from __future__ import annotations

from msgspec import Struct


class Histogram(Struct):
    """Observations sorted into fixed buckets: ``counts[i]`` fell at or under ``bounds[i]``
    (and over the bound before it); the last count is of those over every bound (+Inf).
    Not cumulative."""

    bounds: list[float]
    counts: list[int]
    sum: float
    """Sum of every observation, in the unit of the bounds (seconds for durations)."""

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """An estimate of the ``q`` quantile (0..1), interpolated linearly inside its
        bucket as Prometheus' ``histogram_quantile`` does; None without observations.
        Past the last bound it answers that bound."""
        total = self.count
        if not total:
            return None
        rank, seen = q * total, 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                low = self.bounds[i - 1] if i else 0.0
                return low + (self.bounds[i] - low) * max(0.0, rank - seen) / n
            seen += n
        return self.bounds[-1]


class MethodMetrics(Struct):
    requests: int
    """Replies written (errors included)."""
    errors: dict[str, int]
    """Error replies by error code (``not_found``, ``invalid``, ...)."""
    latency: Histogram
    """Seconds from the decoded request frame to its reply written to the socket."""


class Counts(Struct):
    """The counters that are kept across restarts (in ``metrics.json`` in the state dir)."""

    get_or_create: dict[str, dict[str, int]] = {}
    """tool -> outcome ("created", "existing", "resumed") -> calls."""
    requests: dict[str, int] = {}
    """method -> replies."""
    errors: dict[str, dict[str, int]] = {}
    """method -> error code -> error replies."""
    sessions_ended: dict[str, int] = {}
    """end reason ("ended", "reaped", "expired") -> sessions."""


class DaemonMetrics(Struct, kw_only=True):
    enabled: bool
    """False when the daemon runs with ``OMNID_METRICS=off``: nothing is counted."""
    started_at: float
    uptime: float
    since_start: Counts
    reuse_rate: float | None
    """Share of get_or_create calls since start that found a session (existing or resumed)."""
    methods: dict[str, MethodMetrics]
    """Methods called since start."""
    reap_latency: dict[str, Histogram]
    """Seconds from an owner's death to its sessions' end, committed: "event" from the OS
    exit event firing; "sweep" an upper bound (since the sweep before, which found it alive)."""
    commit_batch: Histogram
    """Writes joined in each committed transaction (group commit)."""
    commit_seconds: Histogram
    """Seconds each COMMIT took."""
    commit_failures: int
    connections: int
    watched_owners: int
    database_bytes: int
    wal_bytes: int
    totals: Counts
    """``since_start`` plus what earlier runs of the daemon counted (for the same state dir)."""
    totals_since: float | None = None
    """When the persisted totals began (UTC epoch seconds)."""
    total_reuse_rate: float | None = None


def reuse_rate(outcomes: dict[str, dict[str, int]]) -> float | None:
    """Share of get_or_create calls that found a session (existing or resumed); None with none."""
    calls = reused = 0
    for by_outcome in outcomes.values():
        for outcome, n in by_outcome.items():
            calls += n
            if outcome != "created":
                reused += n
    return reused / calls if calls else None
