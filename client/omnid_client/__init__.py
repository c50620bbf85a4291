"""Thin client for the omnid session daemon: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

__version__ = "0.1.0"

from .client import Client  # noqa: E402
from .errors import (  # noqa: E402
    Conflict,
    InternalError,
    Invalid,
    NotFound,
    OmnidError,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    StorageError,
    Timeout,
    TooLarge,
    TransportError,
    Unavailable,
    Unsupported,
    VersionMismatch,
)
from .protocol import Session  # noqa: E402

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "InternalError",
    "Invalid",
    "NotFound",
    "OmnidError",
    "PermissionDenied",
    "ProtocolError",
    "RemoteError",
    "Session",
    "StorageError",
    "Timeout",
    "TooLarge",
    "TransportError",
    "Unavailable",
    "Unsupported",
    "VersionMismatch",
    "__version__",
]


def __getattr__(name: str):
    # asyncio costs a blocking tool ~40 ms of import time it never uses: load it on demand.
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
