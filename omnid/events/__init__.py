"""Live events: the hub that publishes what each commit did, its subscribers, and the on-disk log they resume from."""

from .hub import Hub, Subscription

__all__ = ["Hub", "Subscription"]
