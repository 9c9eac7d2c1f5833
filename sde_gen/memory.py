"""How much memory there is, and one-line refusals of work that would not fit in it."""

from __future__ import annotations

import os

from .errors import UserInputError

__all__ = ["available_memory", "check_fits", "format_bytes"]


def available_memory() -> int | None:
    """Bytes of memory available to this process (Linux ``MemAvailable``; else the physical
    memory), or None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(b: float) -> str:
    """``b`` bytes in decimal units: ``"1.5 GB"``."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if b < 1000 or unit == "PB":
            return f"{b:.1f} {unit}"
        b /= 1000
    return f"{b:.1f} PB"


def check_fits(needed: int, what: str, *, hint: str = "",
               available: int | None = None) -> None:
    """Refuse, before any work, ``what`` needing ``needed`` bytes when fewer are available.

    Raises:
        UserInputError: ``"<what> need about X of memory and this machine has Y available"``,
            followed by ``hint``.
    """
    available = available_memory() if available is None else available
    if available is None or needed <= available:
        return
    raise UserInputError(f"{what} need about {format_bytes(needed)} of memory and this machine "
                         f"has {format_bytes(available)} available" + (f"; {hint}" if hint else ""))
