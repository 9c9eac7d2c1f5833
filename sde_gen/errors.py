"""The package's error types: the failures a user can cause and fix, as opposed to bugs.

The ``sde-gen`` command line prints an :class:`SDEGenError` as one line ``error: ...`` (exit code
2); any other exception is a bug and keeps its traceback. Each type also derives from the built-in
exception that callers of the library already catch (``ValueError``, ``RuntimeError``,
``ImportError``), so ``except ValueError`` around an entry point keeps working.

This module imports nothing from ``sde_gen``, so every module can import it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MissingDependencyError",
    "NonFiniteLossError",
    "SDEGenError",
    "UserInputError",
]


class SDEGenError(Exception):
    """Base of the errors that a user causes and can fix; the CLI prints them in one line."""


class UserInputError(SDEGenError, ValueError):
    """An argument, option or data file that is invalid (unknown name, out of range, malformed)."""


class ConfigError(UserInputError):
    """An invalid configuration key or value."""


class CheckpointError(SDEGenError, RuntimeError):
    """A missing, unreadable, incomplete or unwritable checkpoint."""


class NonFiniteLossError(SDEGenError, RuntimeError):
    """Too many consecutive training steps with a NaN/Inf loss or gradient."""


class MissingDependencyError(SDEGenError, ImportError):
    """An optional package that a requested feature needs is not installed."""
