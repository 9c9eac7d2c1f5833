"""Generate many samples in batches, reproducibly: batch ``i`` uses the seed ``seed + i``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .distributed import gather_batches, rank_world
from ..errors import UserInputError
from ..parameterization import EpsModel
from ..sampling import sample
from ..sampling.result import count_nonfinite
from ..sde import SDE


@dataclass(frozen=True)
class Generated:
    """Samples ``(n, *D)`` on the CPU, total NFE per batch, and wall time in seconds.

    ``n_nonfinite`` counts the samples with a NaN or infinite entry (a diverged model or solver);
    callers must not report or save such a set as if it were good (``sde-gen sample`` refuses).
    """

    x: torch.Tensor
    nfe: int
    seconds: float
    n_nonfinite: int = 0


def generate(
    model: EpsModel,
    sde: SDE,
    n: int,
    shape: tuple[int, ...],
    solver: str,
    *,
    batch_size: int = 512,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    **options: Any,
) -> Generated:
    """Draw ``n`` samples of per-example ``shape`` with :func:`~sde_gen.sampling.sample`.

    Returns the samples, the NFE of one batch (every batch makes the same calls for fixed-step
    solvers; for adaptive ones the largest) and the wall time. In a torch.distributed process
    group, rank r draws the batches ``i = r mod W`` and every rank gets all samples: the result
    is the same for any number of processes.
    """
    if n < 1 or batch_size < 1:
        raise UserInputError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    mine: dict[int, torch.Tensor] = {}
    nfe = 0
    start = time.perf_counter()
    rank, world = rank_world()
    n_batches = (n + batch_size - 1) // batch_size
    todo = range(rank, n_batches, world)
    for i in tqdm(todo, desc=f"sample ({solver})", disable=not progress or rank > 0, unit="batch"):
        b = min(batch_size, n - i * batch_size)
        g = torch.Generator(device=device).manual_seed(seed + i)
        res = sample(model, sde, (b, *shape), solver, generator=g, device=device, **options)
        mine[i] = res.x.float().cpu()
        nfe = max(nfe, res.nfe)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    x = torch.cat(gather_batches(mine))
    return Generated(x=x, nfe=nfe, seconds=time.perf_counter() - start,
                     n_nonfinite=count_nonfinite(x))
