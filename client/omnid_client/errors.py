"""The exceptions every omnid call can raise, catchable at the level a caller cares about.

    OmnidError
    ├── TransportError          the daemon could not be reached or answered badly
    │   ├── Unavailable         no daemon, and none could be started
    │   ├── Timeout             connect or request deadline passed
    │   └── ProtocolError       malformed frame or version mismatch
    │       └── VersionMismatch
    └── RemoteError             the daemon answered with an error (``.code``)
        ├── Invalid
        │   └── TooLarge
        ├── NotFound, PermissionDenied, Conflict, Unsupported
        └── StorageError, InternalError
"""

from __future__ import annotations

from typing import Any


class OmnidError(Exception):
    """Base class of every omnid error: ``message`` says what went wrong, ``details`` (often
    empty) holds machine-readable context such as the offending field or size."""

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    @property
    def field(self) -> str | None:
        """The request field at fault (``session_id``, ``tool_id`` …), when one is."""
        field = self.details.get("field")
        return field if isinstance(field, str) else None


class TransportError(OmnidError):
    pass


class Unavailable(TransportError):
    pass


class Timeout(TransportError):
    pass


class ProtocolError(TransportError):
    code = "protocol"


class VersionMismatch(ProtocolError):
    code = "version_mismatch"


class RemoteError(OmnidError):
    """An error reply from the daemon; ``code`` is its stable, machine-readable kind."""

    code = "error"


class Invalid(RemoteError):
    code = "invalid"


class NotFound(RemoteError):
    code = "not_found"


class PermissionDenied(RemoteError):
    code = "permission"


class Conflict(RemoteError):
    code = "conflict"


class Unsupported(RemoteError):
    code = "unsupported"


class TooLarge(Invalid):
    """Invalid because something is over a size limit (frame, content, metadata, list)."""

    code = "too_large"


class StorageError(RemoteError):
    """The daemon could not store a write. ``reason`` says why where it is known:
    ``"quota"`` (the database reached its configured maximum size), ``"database_gone"``
    (the database file was deleted or replaced under the daemon), or None (a disk error)."""

    code = "storage"

    @property
    def reason(self) -> str | None:
        reason = self.details.get("reason")
        return reason if isinstance(reason, str) else None


class InternalError(RemoteError):
    code = "internal"


_BY_CODE: dict[str, type[OmnidError]] = {
    cls.code: cls
    for cls in (
        Invalid,
        NotFound,
        PermissionDenied,
        Conflict,
        Unsupported,
        TooLarge,
        StorageError,
        InternalError,
        ProtocolError,
        VersionMismatch,
    )
}


def from_wire(code: str, message: str, details: dict[str, Any] | None = None) -> OmnidError:
    """The exception for an error reply; unknown codes (from a newer daemon) stay RemoteError."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = RemoteError(message, details)
        err.code = code
        return err
    return cls(message, details)
