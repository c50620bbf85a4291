"""Encodings the store shares: JSON text for documents in TEXT columns (metadata, memory
values), exact money, and opaque keyset-pagination cursors."""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from omnid_client.errors import Invalid

_encode = msgspec.json.Encoder().encode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
_decode_any = msgspec.json.Decoder().decode

NANOS = 1_000_000_000


def dumps(value: Any) -> str:
    return _encode(value).decode()


def loads_dict(text: str) -> dict[str, Any]:
    return _decode_dict(text)


def loads(text: str) -> Any:
    return _decode_any(text)


def to_nanos(usd: float) -> int:
    return round(usd * NANOS)


def from_nanos(nanos: int) -> float:
    return nanos / NANOS


def encode_cursor(position: float, key: str) -> str:
    """An opaque cursor for keyset pagination on (position, key), newest first."""
    return base64.urlsafe_b64encode(f"{position!r}|{key}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        position, key = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(position), key
    except ValueError:
        raise Invalid(f"cursor {cursor!r} is not one this daemon issued", {"field": "cursor"}) from None
