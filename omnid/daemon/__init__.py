"""Everything that runs inside ``omnid serve``."""

from .app import run

__all__ = ["run"]
