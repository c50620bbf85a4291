"""Files the CLI writes whole: a private temporary file, synced, then renamed into place."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

from .transfer import TransferError


@contextlib.contextmanager
def replace_atomically(output: Path, *, force: bool) -> Iterator[IO[bytes]]:
    """A file to write ``output``'s new content to; it takes ``output``'s place only when the
    block ends without an error. An existing ``output`` is refused unless ``force``."""
    if output.exists() and not force:
        raise TransferError(f"{output} exists; pass --force to overwrite it", "exists")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        # The export holds every message: readable by its owner alone, like the database.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except OSError as e:
        raise TransferError(f"cannot write {output}: {e}", "io") from None
    finally:
        if tmp.exists():
            tmp.unlink()
