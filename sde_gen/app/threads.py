"""The CPU thread policy of a run, applied by ``train`` and by every command that loads a run.

A 2-D run's network is a small MLP: its ops are too small for intra-op threads to pay, and on a
2-core machine torch's default threading made the default training run 5x slower in wall time
than one thread, and an exact-trace likelihood batch about 10x slower. Image networks keep
torch's default. ``train.threads`` (or a command's ``--threads``) overrides the rule.
"""

from __future__ import annotations

import torch

from .config import Config
from .factory import is_image

#: Torch's intra-op thread count when this process first applied a policy (before any was set).
_torch_default: int | None = None


def torch_default_threads() -> int:
    """Torch's default intra-op thread count in this process (as it was before any policy)."""
    global _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    return _torch_default


def thread_count(cfg: Config, threads: int = 0) -> int:
    """The intra-op threads for ``cfg``'s run: ``threads`` if > 0, else ``cfg.train.threads`` if
    > 0, else 1 for 2-D data and torch's default for images."""
    if threads < 0:
        from ..errors import UserInputError

        raise UserInputError(f"--threads must be >= 0 (0: the run's policy), got {threads}")
    return threads or cfg.train.threads or (torch_default_threads() if is_image(cfg.data) else 1)


def apply_thread_policy(cfg: Config, device: torch.device | str, threads: int = 0) -> int | None:
    """Set torch's intra-op threads for ``cfg``'s run (:func:`thread_count`) when it computes on
    the CPU; returns the count set, or ``None`` on another device (nothing is changed there)."""
    if torch.device(device).type != "cpu":
        return None
    n = thread_count(cfg, threads)
    torch.set_num_threads(n)
    return n
