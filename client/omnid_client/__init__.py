"""Thin client for the omnid session daemon: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .client import Client
from .errors import (
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
from .protocol import Session

if TYPE_CHECKING:
    from .aio import AsyncClient

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


def __getattr__(name: str) -> type[AsyncClient]:
    # asyncio costs a blocking tool ~40 ms of import time it never uses: load it on demand.
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
