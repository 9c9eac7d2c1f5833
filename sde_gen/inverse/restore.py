"""``restore``: samples of ``x0`` given ``y = A x0 + s z`` with an unconditional model.

By default every method walks the same reverse kernel on the package's grid, the DDPM posterior
``q(x_s | x_t, x0)`` with ``x0`` replaced by the method's guided estimate of ``E[x0 | x_t, y]``
([Ho20] Eq. (7); the state moves as with the score ``score + g``), and ends with that estimate at
the last grid time (Tweedie's step). The estimates are in :mod:`.guidance`. With ``solver=...``
any registered solver walks the guided model instead (:mod:`.posterior_model`). Works on every
SDE (on a flow path the first step from ``T`` takes the model's own x0, where ``p(y | x_T)`` is
flat).

Refs: [Chung23] Alg. 1; [Song23pgdm] Alg. 1; [Rozet24] Sec. 4; [Ho20] Eq. (6)-(7).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..chain import posterior_coeffs
from ..errors import UserInputError
from ..noise import Generator, randn
from ..parameterization import CountingModel, EpsModel
from ..sampling.driver import (
    FLOAT_DTYPES,
    Progress,
    check_pure_start,
    check_shape,
    draw_prior,
    time_grid_for,
)
from ..sampling.impute import REPLACEMENT_SOLVERS, impute
from ..sampling.result import SampleResult
from ..sampling.sample import sample
from ..sampling.spec import Option, check_options
from ..sampling.thresholding import process_x0
from ..sde import SDE
from .guidance import denoise_with_graph, guided_x0
from .operators import LinearOperator, Mask, check_linear
from .posterior_model import PosteriorModel
from .smc import SMC_OPTIONS, restore_smc

__all__ = ["METHODS", "VARIANCES", "restore"]

DEFAULT_STEPS = 200
DEFAULT_SPACING = "logsnr"

#: The kernel's variance: DDPM's beta~ (too small on a coarse grid), beta (too large) or their
#: geometric mean ([Nichol21] Eq. (15) at v = 1/2), the default (closest on a Gaussian).
VARIANCES = ("geometric", "beta_tilde", "beta")

#: Each method's options.
METHODS: dict[str, tuple[Option, ...]] = {
    "dps": (
        Option("zeta", float, 1.0, "DPS step scale zeta ([Chung23] App. C.2)", min=0.0,
               min_open=True),
        Option("step", str, "paper", "paper: zeta / ||r|| times grad ||r||^2 after the kernel; "
               "constant: zeta times it; likelihood: the Gaussian likelihood score "
               "grad ||r||^2 / (2 s^2) (s > 0)", choices=("paper", "constant", "likelihood")),
    ),
    "pgdm": (
        Option("data_var", float, 1.0, "the data variance v of PiGDM's r_t^2", min=0.0,
               min_open=True),
        Option("cg_steps", int, 20, "conjugate-gradient iterations on r_t^2 A A^T + s^2 I",
               min=1),
    ),
    "mmps": (
        Option("cg_steps", int, 5, "conjugate-gradient iterations (one VJP each)", min=1),
    ),
    "smc": SMC_OPTIONS,
    "replacement": (
        Option("resample", int, 1, "RePaint passes per interval ([Lugmayr22]; 1: replacement)",
               min=1),
    ),
}


def _check_noise(noise_std: Any) -> float:
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or (
            not math.isfinite(noise_std) or noise_std < 0):
        raise UserInputError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return float(noise_std)


def _check_y(y: Any, op: LinearOperator, shape: tuple[int, ...]) -> torch.Tensor:
    want = op.out_shape(shape[1:])
    if not torch.is_tensor(y) or not y.is_floating_point():
        raise UserInputError(f"y must be a floating tensor (B, *{want}), got "
                             f"{type(y).__name__ if not torch.is_tensor(y) else y.dtype}")
    if tuple(y.shape[1:]) != want or y.shape[0] not in (1, shape[0]):
        raise UserInputError(f"the operator maps {shape[1:]} to {want}, but y has shape "
                             f"{tuple(y.shape)} (want ({shape[0]} or 1, *{want}))")
    if not bool(torch.isfinite(y).all()):
        raise UserInputError("y has NaN or infinite values")
    return y.expand(shape[0], *want)


def _check_solver_method(method: str, opts: dict[str, Any], variance: str) -> None:
    """A ``solver`` runs a guided model: the method needs a score form (replacement takes one of
    the stochastic solvers instead)."""
    if method == "smc":
        raise UserInputError("method 'smc' is its own sampler: it takes no solver")
    if method == "dps" and opts["step"] != "likelihood":
        raise UserInputError(f"dps's {opts['step']!r} step corrects the next state of DDPM's "
                             f"kernel and has no score form: with a solver use step='likelihood' "
                             f"(noise_std > 0), mmps or pgdm")
    if variance != "geometric":
        raise UserInputError("variance is the DDPM kernel's: a solver sets its own steps")


def restore(
    model: EpsModel,
    sde: SDE,
    y: torch.Tensor,
    op: LinearOperator,
    *,
    noise_std: float,
    method: str,
    shape: tuple[int, ...],
    generator: Generator = None,
    steps: int | None = None,
    t_min: float | None = None,
    spacing: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = False,
    variance: str = "geometric",
    solver: str | None = None,
    solver_options: dict[str, Any] | None = None,
    clip_sample: float | None = None,
    **options: Any,
) -> SampleResult:
    """Sample ``x0 | y`` for the linear measurement ``y = op(x0) + noise_std z``.

    Args:
        model: eps-model ``model(x, t)`` of the data (differentiable: guidance takes
            vector-Jacobian products through it); on a flow path it must also predict x0.
        sde: any SDE of :data:`sde_gen.sde.SDES`.
        y: ``(B, *M)`` or ``(1, *M)`` (shared), ``M = op``'s output shape for ``shape``.
        op: a :mod:`sde_gen.inverse` operator, probed for linearity (:func:`check_linear`).
        noise_std: ``s >= 0``; DPS's ``step="likelihood"`` needs ``s > 0``.
        method: ``"dps"``, ``"pgdm"``, ``"mmps"``, ``"smc"`` (``particles`` needed; the dense
            matrix of ``op``, see :mod:`.smc`) or, for a :class:`Mask` with ``s = 0``,
            ``"replacement"`` (:func:`~sde_gen.sampling.impute.impute`: replacement, RePaint
            with ``resample > 1``). Options in :data:`METHODS`.
        shape: ``(B, *D)`` of the samples.
        steps, t_min, spacing: the grid (default 200 log-SNR steps to the SDE's ``t_min``).
        variance: the kernel's variance, one of :data:`VARIANCES` (not for replacement).
        solver: ``None`` (DDPM's kernel, above) or any solver of
            :data:`~sde_gen.sampling.SOLVERS`, run by :func:`~sde_gen.sampling.sample` on the
            guided model :class:`~.posterior_model.PosteriorModel` (``steps``, ``t_min`` and
            ``spacing`` then default to the solver's): for ``mmps``, ``pgdm`` and ``dps`` with
            ``step="likelihood"``, the methods with a score form. For ``replacement``: its
            stochastic solver, one of ``REPLACEMENT_SOLVERS`` (default ``pc``, [Song21]
            App. I.2).
        solver_options: the solver's options (e.g. ``{"order": 2}`` for ``dpm``; a solver that
            steps on x0 takes ``clip_sample`` here).
        clip_sample: clip the guided x0 to ``[-c, c]`` before each kernel step (DDPM's
            ``clip_sample``; ``None`` or 0: off). For image models on ``[-1, 1]``: 1 keeps the
            guidance of a learned denoiser, whose Jacobian is neither symmetric nor well
            conditioned where pixels never vary (MMPS at ``s = 0``), from running away.
        options: the method's options.

    Returns:
        :class:`SampleResult` (for ``smc`` an :class:`~sde_gen.sampling.smc.SMCResult`) with
        ``x`` the samples ``(B, *D)`` and ``nfe`` the forward calls of the model (batched over
        the ``K`` particles for ``smc``); guidance adds backward passes: DPS and PiGDM one per
        step, MMPS ``cg_steps + 1``.

    Raises:
        UserInputError: an unknown method or option, a bad ``noise_std`` or ``y``, an operator
            whose output shape does not match ``y``, a nonlinear operator, ``s = 0`` for a
            method that needs ``s > 0``, ``replacement`` with ``s > 0`` or not a :class:`Mask`,
            a ``solver`` for a method without a score form.
    """
    if variance not in VARIANCES:
        raise UserInputError(f"unknown variance {variance!r}; choose one of "
                             f"{', '.join(VARIANCES)}")
    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    opts = check_options(METHODS[method], options, owner=f"method {method!r}")
    s = _check_noise(noise_std)
    if method == "dps" and opts["step"] == "likelihood" and s == 0:
        raise UserInputError("dps with step='likelihood' weighs the residual by 1 / s^2: it needs "
                             "noise_std > 0 (use step='paper')")
    if clip_sample is not None:
        if isinstance(clip_sample, bool) or not isinstance(clip_sample, (int, float)) or not (
                math.isfinite(clip_sample) and clip_sample >= 0):
            raise UserInputError(f"clip_sample must be a finite number >= 0, got {clip_sample!r}")
        if method in ("smc", "replacement"):
            raise UserInputError(f"clip_sample clips the guided x0 of dps, pgdm and mmps; method "
                                 f"{method!r} has none")
    if solver is not None and method != "replacement":
        _check_solver_method(method, opts, variance)
        if clip_sample is not None:
            solver_options = {**(solver_options or {}), "clip_sample": clip_sample}
    shape = check_shape(shape)
    check_linear(op, shape[1:])
    y = _check_y(y, op, shape)
    if solver is not None and method != "replacement":
        guided = PosteriorModel(model, sde, y.to(dtype=dtype, device=device), op, noise_std=s,
                                method=method, options=opts)
        return sample(guided, sde, shape, solver, steps=steps, t_min=t_min, spacing=spacing,
                      generator=generator, device=device, dtype=dtype, progress=progress,
                      **(solver_options or {}))
    if method == "replacement":
        if not isinstance(op, Mask):
            raise UserInputError(f"method 'replacement' (and RePaint) is for Mask operators only, "
                                 f"got {op.name}")
        if s > 0:
            raise UserInputError("method 'replacement' sets the known entries to y exactly: it "
                                 "needs noise_std = 0 (use mmps or smc for a noisy y)")
        if solver is not None and solver not in REPLACEMENT_SOLVERS:
            raise UserInputError(f"method 'replacement' runs one of the stochastic solvers "
                                 f"({', '.join(REPLACEMENT_SOLVERS)}), got solver {solver!r}")
        x_known = op.adjoint(y.to(dtype=dtype, device=device))
        return impute(model, sde, x_known, op.mask.to(x_known.device), solver=solver or "pc",
                      resample=opts["resample"], steps=steps, t_min=t_min, spacing=spacing,
                      generator=generator, progress=progress)
    ts = time_grid_for(sde, steps=steps, t_min=t_min, spacing=spacing, default_steps=DEFAULT_STEPS,
                       default_spacing=DEFAULT_SPACING, device=device)
    check_pure_start(model, sde, ts)
    if dtype not in FLOAT_DTYPES:
        raise UserInputError(f"dtype must be a real floating type, got {dtype}")
    y = y.to(dtype=dtype, device=device)
    alpha, sigma = sde.marginal_coeffs(ts.to(torch.float64))
    post = posterior_coeffs(alpha.to(torch.float64), sigma.to(torch.float64))
    kernel_var = {"beta_tilde": post.var_tilde, "beta": post.v,
                  "geometric": (post.var_tilde * post.v).sqrt()}[variance]
    if method == "smc":
        return restore_smc(model, sde, y, op, noise_std=s, ts=ts, x_shape=shape,
                           kernel_var=kernel_var, generator=generator, dtype=dtype,
                           options=opts, progress=progress)
    x = draw_prior(sde, shape, generator=generator, device=device, dtype=dtype)
    counted = CountingModel(model)
    with Progress(len(ts) - 1, desc=f"restore ({method})", show=progress) as bar:
        for k in range(len(ts)):
            t = ts[k].to(x.dtype).expand(shape[0])
            with torch.enable_grad():
                x0, leaf, a_t, s_t = denoise_with_graph(counted, sde, x, t)
                x0_g, shift = guided_x0(method, x0, leaf, a_t, s_t, y, op, s, opts)
            x0_g = process_x0(x0_g, clip_sample=clip_sample)
            if k == len(ts) - 1:  # Tweedie's last step: the guided x0 at t_min
                x = x0_g if shift is None else x0_g + shift
                break
            z = randn(shape, generator, dtype=x.dtype, device=x.device)
            mean = float(post.c_x[k]) * x + float(post.c_x0[k]) * x0_g  # Eq. (7) [Ho20]
            x = mean + math.sqrt(float(kernel_var[k])) * z
            if shift is not None:
                x = x + shift
            x = x.detach()
            bar.update()
    return SampleResult(x=x, x_mean=x, nfe=counted.nfe, ts=ts)
