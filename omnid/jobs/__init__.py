"""The daemon's background jobs (reaping, idle expiry, memory expiry, retention), each
woken by the one re-arming ``Timer``."""

from ._timer import Timer

__all__ = ["Timer"]
