"""Thin client for the omnid session daemon: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
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

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client
    from .protocol import Session

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


def __getattr__(name: str) -> type[Client] | type[Session] | type[AsyncClient]:
    # Loaded on first use: a hook that only imports the package, or only catches its errors,
    # pays none of msgspec, the protocol structs or the socket code, and a blocking tool
    # none of asyncio (~40 ms).
    if name == "Client":
        from .client import Client

        return Client
    if name == "Session":
        from .protocol import Session

        return Session
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
