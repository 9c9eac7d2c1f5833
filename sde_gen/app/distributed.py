"""Data-parallel training on torch.distributed, launched by ``torchrun`` (never a home-made
launcher).

Global-batch rule: ``train.batch_size`` is the global batch. Each of the W ranks evaluates a
contiguous 1/W slice of it; all ranks draw the same global batch, times and noise from the same
seeded generators (cheap next to the network) and keep their slice. DDP averages the gradients,
so a run's parameters do not depend on the number of processes (up to float reduction order),
and a checkpoint resumes on any world size.

Refs: PyTorch DistributedDataParallel; torchrun (torch.distributed.run).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from .. import errors
from ..errors import SDEGenError, UserInputError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world``, on ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This rank's rows of a global batch (``batch`` must be divisible by ``world``)."""
        if batch % self.world:
            raise UserInputError(f"train.batch_size={batch} must be divisible by the {self.world} "
                                 "processes (it is the global batch)")
        per = batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def setup(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1); NCCL on CUDA, gloo
    on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, device)


def all_reduce(t: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """All-reduce (``mean``, ``max`` or ``min``) across ranks; the identity in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    ops = {"mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t / dist.get_world_size() if op == "mean" else t


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` on rank 0 only (its result there, ``None`` elsewhere), and a
    failure of it on every rank.

    Rank 0 broadcasts whether ``fn`` raised; the other ranks wait for that (as at a barrier) and
    then raise an :class:`~sde_gen.errors.SDEGenError` of the same type with the same one-line
    message, so that no rank is left waiting in a collective for a rank 0 that stopped (a
    checkpoint that cannot be written, a run lock held by another process). Rank 0 re-raises its
    own exception. In one process this is just ``fn(*args, **kwargs)``.
    """
    rank, world = rank_world()
    if world == 1:
        return fn(*args, **kwargs)
    result, error, status = None, None, [None]
    if rank == 0:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # every failure (an interrupt too) must reach the other ranks
            error, status = e, [(type(e).__name__, _first_line(e))]
    dist.broadcast_object_list(status, src=0)
    if error is not None:
        raise error
    if status[0] is not None:
        raise _error_from_main(*status[0])
    return result


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _error_from_main(name: str, message: str) -> SDEGenError:
    """The error a non-zero rank raises for rank 0's exception named ``name``: the package's
    error type of that name with the same message, else one saying what rank 0 raised."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, SDEGenError):
        return cls(message)
    if name in _EXPECTED_OS_ERRORS:  # FileNotFoundError, PermissionError, ...: the same words
        return SDEGenError(message)
    return SDEGenError(f"rank 0 stopped with {name}: {message}")


#: ``OSError`` types whose message already says what went wrong.
_EXPECTED_OS_ERRORS = ("OSError", "FileNotFoundError", "FileExistsError", "PermissionError",
                       "IsADirectoryError", "NotADirectoryError")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """``(rank, world)`` of an initialized process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_batches(mine: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    """Collect ``{batch index: CPU tensor}`` from every rank, in batch order, on every rank."""
    _, world = rank_world()
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    merged = {k: v for part in parts for k, v in part.items()}
    return [merged[k] for k in sorted(merged)]


#: The devices a run can use: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``,
#: ``cuda:N`` and ``mps``.
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """The device named ``name`` (one of :data:`DEVICES`); ``auto`` picks CUDA when present.

    Raises:
        UserInputError: an unknown name (``meta`` included: it holds no data), or a device that
            this machine does not have.
    """
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise UserInputError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"device {name} requested, but CUDA is not available; use "
                                 "auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(f"device {name} requested, but this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"device {name} requested, but MPS is not available; use auto or cpu")
    return dev
