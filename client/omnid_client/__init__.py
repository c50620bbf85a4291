"""Thin client for the omnid session daemon: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

__version__ = "0.1.0"

from .aio import AsyncClient  # noqa: E402
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
