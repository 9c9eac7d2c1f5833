"""Generate many samples in batches, reproducibly: sample ``i`` of a run depends on
``(seed, i)`` alone, whatever the batch size or the number of processes
(:class:`~sde_gen.noise.IndexedGenerator`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..memory import available_memory, check_fits
from ..noise import IndexedGenerator, block_size_for, check_seed
from ..parameterization import EpsModel
from ..sampling import sample
from ..sampling.result import count_nonfinite
from ..sde import SDE
from .distributed import gather_batches, rank_world


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


#: Bytes held per sample value while generating and saving: the float32 batches, their
#: concatenation, and the arrays written out (measured peak about 2.5x the result's size).
BYTES_PER_VALUE = 3 * 4


def check_memory(n: int, shape: tuple[int, ...], available: int | None = None) -> None:
    """Refuse, before any sampling, ``n`` samples of ``shape`` whose results would not fit in
    memory (:data:`BYTES_PER_VALUE` per value against :func:`available_memory`).

    Raises:
        UserInputError: naming what is needed, what there is and the largest ``n`` that fits.
    """
    per_sample = BYTES_PER_VALUE * math.prod(shape)
    avail = available_memory() if available is None else available
    check_fits(n * per_sample, f"{n} samples of shape {tuple(shape)}",
               hint=f"ask for at most {(avail or 0) // per_sample} samples at a time",
               available=avail)


def check_labels(model: Any, y: torch.Tensor, n: int) -> None:
    """``y`` is ``(n,)`` integer labels of ``model``'s classes ``0..K-1`` (the null label ``K``
    allowed), and ``model`` is class-conditional (``model.num_classes``).

    Raises:
        UserInputError: one line naming the problem.
    """
    k = getattr(model, "num_classes", None)
    if k is None:
        raise UserInputError("this model is unconditional (trained without model.class_cond); "
                             "it takes no class labels or guidance")
    if not torch.is_tensor(y) or y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        raise UserInputError(f"labels must be an integer tensor of shape ({n},), got "
                             f"{getattr(y, 'dtype', type(y).__name__)} "
                             f"{tuple(getattr(y, 'shape', ()))}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi > k:
        raise UserInputError(f"class {lo if lo < 0 else hi} is outside the model's classes "
                             f"0..{k - 1}")


def _bind_labels(model: Any, y: torch.Tensor, guidance: float | None) -> EpsModel:
    """``model(x, t, y)`` as an eps-model ``(x, t) -> eps``, guided when ``guidance > 0``."""
    from ..guidance import classifier_free, conditional

    if guidance:
        return classifier_free(model, y, guidance)
    return conditional(model, y)


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
    y: torch.Tensor | None = None,
    guidance: float | None = None,
    x_T: torch.Tensor | None = None,
    **options: Any,
) -> Generated:
    """Draw ``n`` samples of per-example ``shape`` with :func:`~sde_gen.sampling.sample`.

    Returns the samples, the NFE of one batch (every batch makes the same calls for fixed-step
    solvers; for adaptive ones the largest) and the wall time. Sample ``i`` draws its noise from
    its own streams, seeded from ``(seed, i)``, so the samples are the same for any
    ``batch_size``; in a torch.distributed process group, rank r draws the batches
    ``i = r mod W`` and every rank gets all samples, the same for any number of processes.
    Exceptions: solvers that couple the batch (``pc``'s Langevin step size is a batch average,
    as in [Song21]; adaptive ``ode`` steps once for the whole batch, so its error, not its
    target, depends on the batch).

    Class-conditional models: ``y`` gives the label of each sample (``(n,)`` int64); batch ``i``
    samples :func:`sde_gen.guidance.conditional` of its labels, or with ``guidance`` ``w > 0``
    :func:`sde_gen.guidance.classifier_free` (``(1 + w) eps(x, t, y) - w eps(x, t, null)``, one
    batched call per step: the NFE is that of unguided sampling). ``y=None`` samples the model
    as it is (a conditional model: its null label, the unconditional model).

    Raises:
        UserInputError: ``n`` samples would not fit in memory (:func:`check_memory`); labels of
            the wrong shape or outside the model's classes, labels for an unconditional model,
            or ``guidance`` without labels or below 0; all checked before the first model call.
    """
    if n < 1 or batch_size < 1:
        raise UserInputError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    if guidance is not None and (y is None or not guidance >= 0):
        raise UserInputError("guidance needs class labels and a scale w >= 0, got "
                             f"labels={'none' if y is None else 'given'}, w={guidance}")
    if y is not None:
        check_labels(model, y, n)
    if x_T is not None and (not torch.is_tensor(x_T) or not x_T.is_floating_point()
                            or tuple(x_T.shape) != (n, *shape)):
        raise UserInputError(f"the initial noise must be a float tensor of shape "
                             f"{(n, *shape)}, got {getattr(x_T, 'dtype', type(x_T).__name__)} "
                             f"{tuple(getattr(x_T, 'shape', ()))}")
    seed = check_seed(seed)
    check_memory(n, shape)
    block = block_size_for(shape)
    mine: dict[int, torch.Tensor] = {}
    nfe = 0
    start = time.perf_counter()
    rank, world = rank_world()
    n_batches = (n + batch_size - 1) // batch_size
    todo = range(rank, n_batches, world)
    for i in tqdm(todo, desc=f"sample ({solver})", disable=not progress or rank > 0, unit="batch"):
        b = min(batch_size, n - i * batch_size)
        g = IndexedGenerator(seed, i * batch_size, b, block=block, device=device)
        eps_model = model if y is None else _bind_labels(
            model, y[i * batch_size:i * batch_size + b].to(device), guidance)
        if x_T is None:
            res = sample(eps_model, sde, (b, *shape), solver, generator=g, device=device,
                         **options)
        else:
            x_start = x_T[i * batch_size:i * batch_size + b].to(device)
            res = sample(eps_model, sde, None, solver, x_T=x_start, generator=g, device=device,
                         **options)
        mine[i] = res.x.float().cpu()
        nfe = max(nfe, res.nfe)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    x = torch.cat(gather_batches(mine))
    return Generated(x=x, nfe=nfe, seconds=time.perf_counter() - start,
                     n_nonfinite=count_nonfinite(x))
