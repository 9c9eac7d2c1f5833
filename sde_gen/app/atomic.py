"""Atomic file writes: a temporary file beside the target, flushed to disk and renamed over it.

A crash, a signal or a full disk leaves either the old file or the new one, never a torn one, and
no temporary file behind (except after a kill, which :func:`~.checkpoint.remove_stale_temps`
cleans up: the temporary names start with ``.tmp_``). The new file gets the mode any newly
created file gets, ``0o666`` less the umask (``tempfile.mkstemp`` alone would leave it ``0o600``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["new_file_mode", "write_atomic"]


def new_file_mode() -> int:
    """``0o666 & ~umask``: the permissions ``open(path, "w")`` gives a new file."""
    umask = os.umask(0)  # reading the umask means setting it; set it straight back
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write a temporary file beside ``path``, fsync it, give it the mode
    of a new file (:func:`new_file_mode`) and rename it to ``path``.

    Raises:
        Whatever ``write`` or the file system raises (e.g. ``OSError`` ENOSPC); the temporary
        file is removed first and a previous file at ``path`` is left as it was.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the data reaches the disk before the rename
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
