"""Atomic file writes: write to a temporary file in the same directory, then rename.

A rename within one directory is atomic on POSIX and Windows, so a reader (or a crash) sees either
the old file or the complete new one, never half of it.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np


@contextmanager
def atomic_open(path) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` only when the `with` block completes.

    It is a temporary file beside `path`; on success it is flushed to disk and renamed into
    place, and on any exception (a failed checksum, Ctrl-C) it is deleted and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _mode_for(path: Path) -> int:
    """The permissions a plain `open(path, "w")` would give: those of the file being replaced, or
    0666 less the umask. (mkstemp makes its file 0600, so without this every model would be private
    to its writer whatever the umask says.)"""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is never left half-written."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays as an uncompressed `.npz`, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
