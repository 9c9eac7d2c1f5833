"""Imputation and inpainting with an unconditional model: the replacement method and RePaint.

Given ``x0`` on a known set (``mask`` 1 there), the replacement method ([Song21] App. I.2)
runs a stochastic reverse-time solver on the whole state and, after every step to a grid time
``s``, overwrites the known coordinates with a fresh forward draw of the observation,
``x_s[known] = alpha_s x0[known] + sigma_s z``, so the unknown ones evolve next to a noisy copy of
the data they are conditioned on. For the predictor-corrector sampler the replacement follows
the corrector and the predictor separately, as in App. I.2's Alg. (score_sde's inpainter).

RePaint ([Lugmayr22] Alg. 1, jump length 1) harmonizes the two parts: after the step and the
replacement on an interval ``t -> s``, the state is sent back to ``t`` by the forward transition

    x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) z

and the interval is redone, ``resample`` times in all (the last pass is kept), so each interval
costs ``resample`` times the solver's model calls.

Both methods are approximations: the unknown part never sees the exact conditional score
``grad log q_t(x_t^u | x0^k)``. For the asymptotically exact alternative, ``method="smc"``
dispatches to :func:`sde_gen.sampling.smc.impute_smc` (a particle filter).

Refs: [Song21] App. I.2, Eq. (47)-(48); [Lugmayr22] RePaint, Alg. 1; [Ho20] Eq. (4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..chain import grid_coeffs
from ..errors import UserInputError
from ..noise import Generator, randn
from ..parameterization import EpsModel
from ..sde import SDE
from .driver import Progress, SolverRun, plan, solver_spec
from .result import SampleResult
from .torchsde_backend import METHODS as TORCHSDE_METHODS

__all__ = ["METHODS", "REPLACEMENT_SOLVERS", "check_known", "impute"]

#: The solvers the replacement method runs: the single-step stochastic ones (ddim needs eta > 0).
REPLACEMENT_SOLVERS = ("pc", "sde", "ancestral", "ddim")
#: The imputation methods of :func:`impute`.
METHODS = ("replacement", "smc")


def check_known(x_known: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_known, known)``: the observation with its unknown entries zeroed and the mask as a
    bool tensor of the same shape, both checked.

    Raises:
        UserInputError: ``x_known`` not a floating ``(B, *D)`` tensor; a mask that does not
            broadcast to it, has values other than 0/1, or marks every or no coordinate known;
            a NaN or infinite value at a known coordinate (unknown ones may hold anything).
    """
    if not torch.is_tensor(x_known) or x_known.ndim < 2 or x_known.numel() == 0:
        raise UserInputError("x_known must be a non-empty (B, *D) tensor, got "
                             + (f"shape {tuple(x_known.shape)}" if torch.is_tensor(x_known)
                                else type(x_known).__name__))
    if not x_known.is_floating_point():
        raise UserInputError(f"x_known must be a floating-point tensor, got {x_known.dtype}")
    try:
        m = torch.as_tensor(mask, device=x_known.device)
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(f"mask must be a tensor of 0/1 values, got {type(mask).__name__}") \
            from None
    if m.is_complex():
        raise UserInputError(f"mask must hold 0/1 values, got {m.dtype}")
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            bad = m[~((m == 0) | (m == 1))].reshape(-1)[0]
            raise UserInputError(f"mask must hold only 0 and 1 (1 where known), got {bad.item()}")
        m = m == 1
    try:
        fits = torch.broadcast_shapes(m.shape, x_known.shape) == x_known.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise UserInputError(f"mask of shape {tuple(m.shape)} does not broadcast to x_known's "
                             f"{tuple(x_known.shape)}; use (*D,), (B, *D) or (1, H, W)")
    known = m.expand(x_known.shape)
    if bool(known.all()):
        raise UserInputError("the mask marks every coordinate known: there is nothing to impute")
    if not bool(known.any()):
        raise UserInputError("the mask marks no coordinate known: nothing to condition on "
                             "(use sample())")
    if not bool(torch.isfinite(x_known[known]).all()):
        raise UserInputError("x_known has a NaN or infinite value at a known coordinate")
    return torch.where(known, x_known, torch.zeros((), dtype=x_known.dtype,
                                                   device=x_known.device)), known


def _check_resample(resample: Any) -> int:
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise UserInputError(f"resample must be a positive integer (1: no RePaint resampling), "
                             f"got {resample!r}")
    return resample


_ALLOWED = "pc, sde, ancestral or ddim with eta > 0"


def _check_replacement_solver(solver: object) -> None:
    """Refuse the deterministic solvers: replacement needs the solver's own noise."""
    solver_spec(solver)
    if solver not in REPLACEMENT_SOLVERS:
        raise UserInputError(f"solver {solver!r} is deterministic; imputation by replacement "
                             f"needs a stochastic one: {_ALLOWED}")


def _check_stochastic(run: SolverRun) -> None:
    """Refuse a stochastic solver set to run deterministically (ddim with eta = 0)."""
    allowed = _ALLOWED
    if not run.spec.is_stochastic(run.options):
        raise UserInputError(f"ddim with eta=0 is deterministic; imputation by replacement needs "
                             f"a stochastic solver: {allowed}")


@torch.no_grad()
def impute(
    model: EpsModel,
    sde: SDE,
    x_known: torch.Tensor,
    mask: torch.Tensor,
    *,
    solver: str = "pc",
    steps: int | None = None,
    resample: int = 1,
    method: str = "replacement",
    particles: int | None = None,
    t_min: float | None = None,
    generator: Generator = None,
    denoise: bool = True,
    progress: bool = False,
    spacing: str | None = None,
    **options: Any,
) -> SampleResult:
    """Sample the unknown coordinates of ``x_known`` (``mask`` 1 where known) with an
    unconditional model: imputation for vectors, inpainting for images.

    Args:
        model: eps-model ``model(x, t)`` of the data (a guided or conditional model from
            :mod:`sde_gen.guidance` works too).
        sde: the forward SDE.
        x_known: ``(B, *D)``; the entries where ``mask`` is 1 are the observation (the others
            are ignored and may be NaN).
        mask: 1 (or True) where known, broadcastable to ``(B, *D)``: ``(*D,)``, ``(B, *D)``, or
            ``(1, H, W)`` for images (shared over channels).
        solver: for ``method="replacement"``, a stochastic single-step solver of
            :data:`~.solvers.SOLVERS`: ``pc`` (default), ``sde`` (Euler-Maruyama or a torchsde
            method), ``ancestral`` or ``ddim`` with ``eta > 0``. ``smc`` has its own kernel.
        steps: grid intervals (default the solver's, as in :func:`~.sample.sample`; for
            ``smc`` its own default).
        resample: RePaint passes per interval (1: the plain replacement method).
        method: ``"replacement"`` ([Song21] App. I.2, RePaint when ``resample > 1``) or
            ``"smc"`` (:func:`~sde_gen.sampling.smc.impute_smc`, which needs ``particles``).
        particles: particles per row for ``method="smc"``.
        t_min: the end time, in ``(0, T)`` (default the SDE's).
        generator: source of all randomness.
        denoise: finish with Tweedie's step at ``t_min`` (one NFE), as :func:`~.sample.sample`.
        progress: show a progress bar over grid intervals.
        spacing: grid spacing (default the solver's).
        **options: the solver's options (``SOLVERS[solver].options``: ``eta``, ``n_corrector``,
            ``variance``, ...; the ``sde`` solver's torchsde ``method`` is ``sde_method`` here,
            ``method`` being this function's), or for ``smc`` those of ``impute_smc``
            (``variance``, ``resampling``, ``ess_threshold``).

    Returns:
        :class:`SampleResult`: ``x`` with the known coordinates equal to ``x_known`` exactly
        (a final assignment); ``x_mean`` the last step's noise-free mean (its known part
        ``alpha_{t_min} x_known``); ``nfe`` the counted model calls: ``resample`` times the solver's
        calls per interval, times ``steps``, plus one for ``denoise``; ``ts`` the grid.

    Raises:
        UserInputError: a bad mask or ``x_known`` (see :func:`check_known`), an unknown or
            deterministic solver, a bad option, ``resample``, ``steps``, ``t_min`` or
            ``method``, or options of the other method.

    Shapes: ``x_known, x: (B, *D)``.

    Refs: [Song21] App. I.2; [Lugmayr22] Alg. 1.
    """
    if method not in METHODS:
        hint = "; the sde solver's torchsde method is sde_method=" if method in \
            TORCHSDE_METHODS else ""
        raise UserInputError(f"unknown imputation method {method!r}; choose one of "
                             f"{', '.join(METHODS)}{hint}")
    x0, known = check_known(x_known, mask)
    resample = _check_resample(resample)
    if method == "smc":
        return _impute_smc(model, sde, x0, known, solver=solver, steps=steps,
                           resample=resample, particles=particles, t_min=t_min,
                           generator=generator, denoise=denoise, spacing=spacing,
                           progress=progress, options=options)
    if particles is not None:
        raise UserInputError("particles is an option of method='smc', not of 'replacement'")
    if "sde_method" in options:  # impute's own ``method`` is taken: the solver's is renamed
        if solver != "sde":
            raise UserInputError(f"sde_method is an option of solver 'sde', not {solver!r}")
        options = dict(options)
        options["method"] = options.pop("sde_method")
    _check_replacement_solver(solver)
    run = plan(model, sde, solver, options, steps=steps, t_min=t_min, spacing=spacing,
               generator=generator, device=x0.device)
    _check_stochastic(run)
    ts, dtype = run.ts, x0.dtype
    coeffs = grid_coeffs(sde, ts, discrete=run.discrete)
    alpha, sigma = (c.to(dtype) for c in coeffs)
    a_up = (coeffs.alpha[:-1] / coeffs.alpha[1:]).to(dtype)  # forward s -> t on each interval
    std_up = coeffs.posterior().v.clamp(min=0).sqrt().to(dtype)

    def noise() -> torch.Tensor:
        return randn(x0.shape, generator, device=x0.device, dtype=dtype)

    def replace(x: torch.Tensor, k: int) -> torch.Tensor:  # App. I.2 [Song21]: x_s[known] ~ q
        return torch.where(known, alpha[k] * x0 + sigma[k] * noise(), x)

    step = _stepper(run, replace)
    x = replace(sde.prior_sampling(x0.shape, generator=generator, device=x0.device, dtype=dtype),
                0)
    x_mean = x
    with Progress(len(ts) - 1, desc=f"impute ({solver})", show=progress) as prog:
        for k in range(len(ts) - 1):
            for j in range(resample):
                x, x_mean = step(x, ts[k:k + 2], k)
                x = replace(x, k + 1)
                if j < resample - 1:  # back to ts[k] by the forward transition, Alg. 1 [Lugmayr22]
                    x = a_up[k] * x + std_up[k] * noise()
            x_mean = torch.where(known, alpha[k + 1] * x0, x_mean)
            prog.update()
    if denoise:  # Tweedie at ts[-1], as sample() does
        x = run.denoise(x)
    x = torch.where(known, x0, x)
    return SampleResult(x=x, x_mean=x_mean, nfe=run.counted.nfe, ts=ts)


def _stepper(
    run: SolverRun, replace: Callable[[torch.Tensor, int], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """One interval of the solver: ``step(x, ts[k:k+2], k) -> (x, x_mean)`` at ``ts[k + 1]``.

    For ``pc`` with both a corrector and a predictor, the corrector's result at ``ts[k]`` gets
    its own replacement before the predictor runs (App. I.2 [Song21]).
    """
    o = run.options
    split = (run.solver == "pc" and o["corrector"] != "none" and o["n_corrector"] > 0
             and o["predictor"] != "none")
    if not split:
        return lambda x, seg, k: run.step(x, seg)

    def step(x: torch.Tensor, seg: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = run.step(x, seg, options={"predictor": "none"})
        return run.step(replace(x, k), seg, options={"corrector": "none"})

    return step


def _impute_smc(model, sde, x_known, mask, *, solver, steps, resample, particles, t_min,
                generator, denoise, spacing, progress, options) -> SampleResult:
    """``method="smc"``: :func:`~sde_gen.sampling.smc.impute_smc`, imported when used."""
    from .smc import impute_smc

    if solver != "pc":
        raise UserInputError(f"method='smc' moves its particles with its own ancestral kernel; "
                             f"solver={solver!r} does not apply")
    if resample != 1:
        raise UserInputError("resample is an option of method='replacement' (RePaint), not of "
                             "'smc'")
    if particles is None:
        raise UserInputError("method='smc' needs particles (a positive integer per row)")
    return impute_smc(model, sde, x_known, mask, particles=particles, steps=steps, t_min=t_min,
                      generator=generator, denoise=denoise, spacing=spacing, progress=progress,
                      **options)
