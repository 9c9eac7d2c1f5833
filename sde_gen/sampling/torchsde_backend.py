"""The one adapter between the reverse-time SDE and ``torchsde.sdeint``.

torchsde integrates forward in time on a 2-D state ``(B, D)``. With ``u = -t`` the reverse SDE
``dx = [f - g^2 s] dt + g dw_bar`` becomes ``dx = -[f - g^2 s](x, -u) du + g(-u) dW_u`` for
increasing ``u``; the state is flattened to ``(B, prod D)`` and reshaped back. The noise is
additive (``g`` depends on t only), so Ito and Stratonovich agree and every torchsde method
applies in principle. ``reversible_heun`` is only conditionally stable for contractive drifts
and the reverse drift near ``eps`` is strongly contractive (``g^2 / sigma^2`` ~ 1e3 for VP): it
diverges on these problems at every step count we tried; prefer ``euler``/``milstein``/``heun``/
``midpoint``/``srk``.

Refs: [Song21] Eq. (6); torchsde's ``sdeint`` contract.
"""

from __future__ import annotations

import torch
import torchsde

from ..noise import Generator, IndexedGenerator, randint
from ..parameterization import EpsModel, score_fn
from ..sde import SDE
from .pure_start import continue_after_first, posterior_first_step, starts_pure
from .result import Callback

STRATONOVICH = ("midpoint", "heun", "reversible_heun", "log_ode", "euler_heun")
ITO = ("euler", "milstein", "srk")
METHODS = ITO + STRATONOVICH
#: The Levy-area approximation each method needs from the Brownian motion (others: none).
LEVY_AREA = {"srk": "space-time", "log_ode": "foster"}


class _ReversedSDE(torch.nn.Module):
    """The reverse SDE in ``u = -t`` on the flattened state, as torchsde wants it.

    ``sdeint`` evaluates the drift once at the start of every call only to check shapes, at the
    very ``(u, y)`` where every method's first stage evaluates it again: the drift at the start
    state of the current interval (:meth:`begin`) is computed once and reused, so the model is
    called for the solver's own evaluations only.
    """

    noise_type = "diagonal"

    def __init__(self, sde: SDE, model: EpsModel, shape: tuple[int, ...], sde_type: str) -> None:
        super().__init__()
        self.rsde = sde.reverse(score_fn(model, sde))
        self.shape, self.sde_type = shape, sde_type
        self._start: torch.Tensor | None = None
        self._start_drift: torch.Tensor | None = None

    def begin(self, y: torch.Tensor) -> None:
        """The next ``sdeint`` call (one grid interval) starts from the state ``y``."""
        self._start, self._start_drift = y, None

    def f(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y is self._start and self._start_drift is not None:
            return self._start_drift
        t = (-u).to(y.dtype).expand(y.shape[0])
        drift, _ = self.rsde.sde(y.reshape(self.shape), t)
        drift = -drift.reshape(y.shape)
        if y is self._start:
            self._start_drift = drift
        return drift

    def g(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = (-u).to(y.dtype).expand(y.shape[0])
        _, diffusion = self.rsde.forward.sde(y[:, :1], t)
        return diffusion[:, None].expand_as(y)


class _IndexedBrownian(torchsde.BaseBrownian):
    """The Brownian motion of a batch drawn with an :class:`~sde_gen.noise.IndexedGenerator`:
    one ``BrownianInterval`` per block of examples, its entropy from that block's stream, so an
    example's path is the same in any batch."""

    def __init__(self, parts: list[torchsde.BrownianInterval], generator: IndexedGenerator,
                 shape: tuple[int, ...]) -> None:
        self._parts, self._generator, self._shape = parts, generator, shape

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        outs = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self._parts]
        if isinstance(outs[0], tuple):
            return tuple(self._generator.take(torch.cat(o)) for o in zip(*outs))
        return self._generator.take(torch.cat(outs))

    def __repr__(self) -> str:
        return f"_IndexedBrownian({len(self._parts)} blocks, shape={self._shape})"

    @property
    def dtype(self):
        return self._parts[0].dtype

    @property
    def device(self):
        return self._parts[0].device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return self._parts[0].levy_area_approximation


def _brownian(u0: torch.Tensor, u1: torch.Tensor, y: torch.Tensor, generator: Generator,
              levy_area: str) -> torchsde.BaseBrownian:
    """The Brownian motion over ``[u0, u1]`` of the state ``y (B, D)``, seeded from
    ``generator`` (per block of examples for an IndexedGenerator)."""

    def interval(size: tuple[int, ...], entropy: int) -> torchsde.BrownianInterval:
        return torchsde.BrownianInterval(t0=u0, t1=u1, size=size, dtype=y.dtype,
                                         device=y.device, entropy=entropy,
                                         levy_area_approximation=levy_area)

    if not isinstance(generator, IndexedGenerator):
        return interval(tuple(y.shape), int(randint(2**62, (1,), generator, device=y.device)))
    size = (generator.block, *y.shape[1:])
    parts = [interval(size, int(torch.randint(0, 2**62, (1,), generator=g, device=g.device)))
             for g in generator.block_generators]
    return _IndexedBrownian(parts, generator, tuple(y.shape))


@torch.no_grad()
def sample_torchsde(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    method: str = "euler",
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the reverse SDE with ``torchsde.sdeint``, one ``method`` step per interval of ``ts``.

    torchsde steps with a uniform ``dt`` and interpolates linearly at its output times, so each
    grid interval is its own ``sdeint`` call (one Brownian motion over the whole span, the
    solver's extra state carried over): the steps land exactly on ``ts``, whatever its spacing.
    The Brownian motion is seeded from ``generator``, so runs are reproducible.

    Returns:
        ``(x, x)`` at ``ts[-1]`` (torchsde exposes no noise-free mean).
    """
    if starts_pure(sde, ts):  # alpha = 0 at ts[0]: f and g diverge; DDPM's posterior step
        x, x_mean = posterior_first_step(model, sde, x_T, ts, generator)
        return continue_after_first(x, x_mean, ts, callback, lambda x, ts, cb: sample_torchsde(
            model, sde, x, ts, method=method, generator=generator, callback=cb))
    shape = tuple(x_T.shape)
    adapter = _ReversedSDE(sde, model, shape, "stratonovich" if method in STRATONOVICH else "ito")
    y = x_T.reshape(shape[0], -1)
    u = (-ts).to(x_T.dtype)  # increasing
    bm = _brownian(u[0], u[-1], y, generator, LEVY_AREA.get(method, "none"))
    # Each dt a hair above its interval (16 ulps of the state dtype), so that torchsde's
    # min(u + dt, u_end) is the interval's end: one step, no tiny extra one from rounding.
    dts = ((u[1:] - u[:-1]) * (1 + 16 * torch.finfo(x_T.dtype).eps)).tolist()
    extra = None
    for k, dt in enumerate(dts):
        adapter.begin(y)
        ys, extra = torchsde.sdeint(adapter, y, u[k:k + 2], method=method, dt=dt, bm=bm,
                                    extra=True, extra_solver_state=extra)
        y = ys[-1]
        if callback is not None:
            x = y.reshape(shape)
            callback(k, x, x)
    x = y.reshape(shape)
    return x, x
