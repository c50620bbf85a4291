"""omnid: a per-user daemon that knows which session every AI tool process is in."""

__version__ = "0.1.0"
