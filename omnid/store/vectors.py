"""Memory embeddings as stored: checked, normalised float32 vectors, one per memory, each with
a compact int8 copy and a bound on its error (see ``encode``), and each project's dimension."""

from __future__ import annotations

import array
import math
import operator
import sqlite3
import sys
from dataclasses import dataclass

from omnid_client.errors import Invalid

FLOAT32_MAX = 3.4028234663852886e38


def unit_vector(embedding: list[float] | bytes, field: str = "embedding") -> array.array:
    """``embedding`` as a float32 vector of length 1; Invalid, naming the first bad
    component, if it holds NaN or an infinity (or a value float32 cannot hold), or is zero."""
    if isinstance(embedding, bytes):
        if len(embedding) % 4:
            raise Invalid(
                f"{field} is {len(embedding)} bytes: packed float32 takes 4 bytes a dimension", {"field": field}
            )
        values = array.array("f")
        values.frombytes(embedding)
        if sys.byteorder == "big":
            values.byteswap()
    else:
        values = array.array("d", embedding)
    if not values:
        raise Invalid(f"{field} is empty", {"field": field})
    total = 0.0
    for i, x in enumerate(values):
        if not math.isfinite(x) or abs(x) > FLOAT32_MAX:
            raise Invalid(f"{field}[{i}] is {x!r}: every component must be a finite float32", {"field": field})
        total += x * x
    norm = math.sqrt(total)
    if norm == 0.0 or not math.isfinite(norm):
        raise Invalid(f"{field} has no direction (its length is {norm})", {"field": field})
    return array.array("f", [x / norm for x in values])


def imported_vector(embedding: list[float] | bytes, field: str = "embedding") -> array.array:
    """A vector from an export: checked as ``unit_vector`` checks it, and kept bit for bit
    when it is already of unit length (as every exported one is), so an export, import and
    export again gives the same bytes; otherwise normalised."""
    unit = unit_vector(embedding, field)
    given = from_blob(embedding) if isinstance(embedding, bytes) else array.array("f", embedding)
    if abs(math.fsum(x * x for x in given) - 1.0) <= 1e-6:
        return given
    return unit


def to_blob(vector: array.array) -> bytes:
    """Little-endian float32, as stored (and as sqlite-vec reads it)."""
    if sys.byteorder == "big":
        vector = array.array("f", vector)
        vector.byteswap()
    return vector.tobytes()


def from_blob(blob: bytes) -> array.array:
    vector = array.array("f")
    vector.frombytes(blob)
    if sys.byteorder == "big":
        vector.byteswap()
    return vector


CODE_MAX = 127


@dataclass(frozen=True)
class Code:
    """A unit vector ``v`` as ``scale * code`` (int8 per dimension) plus a residual ``v - scale * code``
    whose length is at most ``err``: the compact copy the sqlite-vec engine scans before it
    rescores the few it cannot rule out (store.similar)."""

    code: bytes
    scale: float
    norm2: int
    """The code's squared length (an exact integer)."""
    err: float


def encode(vector: array.array) -> Code:
    """``vector`` (float32, not zero) quantised to int8 with a scale of its own, its largest
    component mapped to 127; the residual is measured on the float32 values as stored."""
    largest = max(max(vector), -min(vector))
    scale = largest / CODE_MAX
    inverse = CODE_MAX / largest  # |x| <= largest, so |x * inverse| rounds to at most 127
    code = array.array("b", [round(x * inverse) for x in vector])
    rest = [x - scale * c for x, c in zip(vector, code, strict=True)]
    residual = math.sqrt(sum(map(operator.mul, rest, rest)))
    # Each step above is exact to about 1e-15 of a unit vector; the slack covers it.
    return Code(code.tobytes(), scale, sum(map(operator.mul, code, code)), residual * (1 + 1e-9) + 1e-12)


def project_dim(db: sqlite3.Connection, project_id: str) -> int | None:
    row = db.execute("SELECT dim FROM project_vector_dims WHERE project_id = ?", (project_id,)).fetchone()
    return row[0] if row else None


def check_dim(found: int | None, dim: int, project_id: str, field: str) -> None:
    if found is not None and found != dim:
        raise Invalid(
            f"{field} has {dim} dimensions but project {project_id} holds vectors of {found} dimensions",
            {"field": field, "dim": dim, "project_dim": found, "project_id": project_id},
        )


def attach(
    db: sqlite3.Connection,
    ref_id: str,
    kind: str,
    project_id: str,
    vector: array.array,
    *,
    session_id: str | None = None,
    expires_at: float | None = None,
) -> None:
    """Store (or replace) a memory's vector and its compact copy; the first one in a project
    fixes its dimension."""
    found = project_dim(db, project_id)
    check_dim(found, len(vector), project_id, "embedding")
    if found is None:
        db.execute("INSERT INTO project_vector_dims (project_id, dim) VALUES (?, ?)", (project_id, len(vector)))
    detach(db, ref_id)  # its trigger drops the old compact copy, wherever it was filed
    db.execute(
        "INSERT INTO memory_vectors (ref_id, kind, project_id, session_id, expires_at, vector) VALUES (?,?,?,?,?,?)",
        (ref_id, kind, project_id, session_id, expires_at, to_blob(vector)),
    )
    store_code(db, ref_id, kind, project_id, expires_at, encode(vector))


def store_code(
    db: sqlite3.Connection, ref_id: str, kind: str, project_id: str, expires_at: float | None, code: Code
) -> None:
    db.execute(
        "INSERT INTO memory_vector_codes (project_id, kind, ref_id, expires_at, scale, norm2, err, code) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (project_id, kind, ref_id, expires_at, code.scale, code.norm2, code.err, code.code),
    )


def detach(db: sqlite3.Connection, ref_id: str) -> None:
    db.execute("DELETE FROM memory_vectors WHERE ref_id = ?", (ref_id,))
