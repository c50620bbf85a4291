"""The daemon's own metrics: counters and histograms kept in memory, their totals kept
across restarts, and their Prometheus text."""

from .recorder import Metrics, enabled_from_env

__all__ = ["Metrics", "enabled_from_env"]
