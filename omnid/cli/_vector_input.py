"""Reading an embedding vector the user gives as JSON in a file or on stdin."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from omnid_client.protocol import MAX_DIMS

MAX_VECTOR_FILE = 64 * MAX_DIMS
"""Largest vector file read, in bytes: JSON of MAX_DIMS floats with room to spare."""


def read_vector(source: str, what: str) -> list[float]:
    """A JSON array of numbers (or an object holding one under "embedding" or "vector") from
    the file ``source``, or stdin for "-". The file is opened without following links."""
    from ..safefile import open_private, os_message

    try:
        if source == "-":
            text = sys.stdin.buffer.read(MAX_VECTOR_FILE + 1)
        else:
            with os.fdopen(open_private(source, os.O_RDONLY, owned=False), "rb") as f:
                text = f.read(MAX_VECTOR_FILE + 1)
    except OSError as e:
        raise click.BadParameter(f"cannot read {source}: {os_message(e)}", param_hint=what) from None
    if len(text) > MAX_VECTOR_FILE:
        raise click.BadParameter(f"{source} is over {MAX_VECTOR_FILE} bytes; no vector is that long", param_hint=what)
    try:
        value: Any = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"{source} is not JSON: {e}", param_hint=what) from None
    if isinstance(value, dict):
        value = value.get("embedding", value.get("vector"))
    if not isinstance(value, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        raise click.BadParameter(
            f"{source} holds no vector: give a JSON array of numbers (or an object with one under "
            '"embedding" or "vector")',
            param_hint=what,
        )
    return [float(x) for x in value]
