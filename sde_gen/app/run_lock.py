"""One writer per run directory: an advisory lock on ``<workdir>/.lock`` held while training.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on the file, which holds the holder's PID. The kernel
releases a ``flock`` when its process exits, however it exits, so a ``.lock`` file left by a
killed run never blocks the next one. Without :mod:`fcntl` (Windows) nothing is locked.
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: train without a lock
    fcntl = None

from ..errors import UserInputError

__all__ = ["LOCK_NAME", "run_lock"]

LOCK_NAME = ".lock"
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


@contextmanager
def run_lock(workdir: str | os.PathLike) -> Iterator[Path | None]:
    """Hold the run lock of ``workdir`` (created if needed) for the ``with`` block.

    Yields:
        The lock file, or ``None`` where the platform or file system cannot lock.

    Raises:
        UserInputError: another process holds the lock; the message names its PID.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield None
        return
    path = workdir / LOCK_NAME
    # Opened without truncating: the holder's PID must survive a failed attempt to lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as any new file
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno in _HELD:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise UserInputError(
                    f"{workdir} is in use by another training process (PID {pid}, lock {path}); "
                    "wait for it to finish, stop it, or use a new --workdir") from None
            # e.g. ENOLCK on some network file systems
            print(f"warning: cannot lock {path} ({e.strerror}); not guarding against a second "
                  "writer", file=sys.stderr)
            locked = False
        if not locked:
            yield None
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # no stale PID; the file itself may stay
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
