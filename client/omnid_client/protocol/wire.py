"""The envelope of every omnid message: frames and their size limit, the hello handshake, release notes.

A frame is a 4-byte big-endian length followed by that many bytes of MessagePack.
The first request on a connection is ``hello``; every request names its method and
carries that method's parameter struct, every response carries a result or an error.
"""

from __future__ import annotations

import struct
from typing import Any, Generic, TypeVar

import msgspec
from msgspec import Struct

from .fields import ShortText

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

MAX_FRAME = 1 << 20
"""Largest frame either side accepts, in bytes (header excluded)."""

HEADER = struct.Struct(">I")


class RequestFrame(Struct):
    """A request as sent; ``params`` is the method's parameter struct."""

    id: int
    method: str
    params: Any = {}


class IncomingRequest(Struct):
    """A request as received; ``params`` stays undecoded until the method is known."""

    id: int
    method: str
    params: msgspec.Raw = msgspec.Raw(b"\x80")


class ErrorInfo(Struct):
    code: str
    message: str
    details: dict[str, Any] = {}


class ResponseFrame(Struct, omit_defaults=True):
    """A response as sent; exactly one of ``result`` and ``error`` is meaningful."""

    id: int
    result: Any = None
    error: ErrorInfo | None = None


class IncomingResponse(Struct):
    id: int
    result: msgspec.Raw = msgspec.Raw(b"\xc0")
    error: ErrorInfo | None = None


T = TypeVar("T")


class Reply(Struct, Generic[T]):
    """A response as received by a caller that knows the result type: decoded in one pass."""

    id: int
    result: T | None = None
    error: ErrorInfo | None = None


# --- handshake -------------------------------------------------------------------


class Hello(Struct):
    proto_major: int
    proto_minor: int
    client_version: ShortText
    client_name: ShortText = ""


class Welcome(Struct):
    proto_major: int
    proto_minor: int
    server_version: str
    pid: int


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as release ``a`` is older than, the same as, or newer than ``b``
    (numeric dot-separated parts; a pre-release suffix sorts before its release)."""

    def key(version: str) -> tuple[tuple[int, int, str], ...]:
        parts = []
        for part in version.split("+")[0].split("."):
            digits = len(part) - len(part.lstrip("0123456789"))
            number = int(part[:digits]) if digits else -1
            # "1rc1" < "1": a part with a suffix sorts before the bare number.
            parts.append((number, 0 if part[digits:] else 1, part[digits:]))
        while parts and parts[-1] == (0, 1, ""):
            parts.pop()
        return tuple(parts)

    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def version_note(client_version: str, daemon_version: str) -> str | None:
    """What to tell someone whose client and daemon are different releases, naming the
    older side; None when they are the same release."""
    order = compare_versions(client_version, daemon_version)
    if order == 0:
        return None
    if order > 0:
        return (
            f"the omnid daemon ({daemon_version}) is older than this client ({client_version}); "
            "it restarts itself when its package is upgraded, otherwise run `omnid stop` and the "
            "next call starts the installed version"
        )
    return (
        f"this client ({client_version}) is older than the omnid daemon ({daemon_version}); "
        "upgrade the client package (omnid or omnid-client)"
    )


class Empty(Struct):
    pass
