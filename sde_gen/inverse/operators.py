"""Linear measurement operators ``y = A x0 + s z`` for inverse problems, with exact adjoints.

Every operator acts on a batch ``(B, *D)`` and returns ``(B, *M)``; ``op.adjoint`` maps back.
Shapes are checked on every call (one-line :class:`~sde_gen.errors.UserInputError`). For small
problems :meth:`LinearOperator.matrix` gives the dense ``(m, D)`` matrix, which is what the exact
posterior (:meth:`sde_gen.analytic.GaussianMixture.posterior`) takes. Nonlinear measurements are
out of scope: :func:`check_linear` refuses an operator that fails a cheap linearity probe.

- :class:`Mask`: the known entries, gathered to ``(B, m)`` (the adjoint scatters them back);
- :class:`Downsample`: ``f x f`` average pooling of ``(B, C, H, W)``;
- :class:`Blur`: Gaussian blur with *zero* padding (the correlation with a symmetric kernel and
  zero padding is self-adjoint; reflect padding is not, its adjoint folds the border back);
- :class:`Projection`: a dense ``(m, D)`` matrix on flattened examples (compressed sensing);
- :class:`Colorize`: RGB -> grey channel mean ``(B, 3, H, W) -> (B, 1, H, W)``; the first axis of
  the colour basis of :mod:`sde_gen.sampling.colorize` is ``sqrt(3)`` times this;
- :class:`FunctionOperator`: a user's linear callable, its adjoint given or by autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserInputError

__all__ = ["Blur", "Colorize", "Downsample", "FunctionOperator", "LinearOperator", "Mask",
           "Projection", "check_linear"]


def _check_batch(x: Any, what: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim < 2 or x.numel() == 0 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise UserInputError(f"{what} must be a non-empty floating (B, ...) tensor, got {got}")
    return x


class LinearOperator:
    """A linear map between example shapes; subclasses give ``_forward``/``_adjoint`` and the
    shape rules ``out_shape``/``in_shape`` (which raise on a shape they do not take)."""

    name = "operator"
    #: ``c`` where the rows are orthogonal with equal norms, ``A A^T = c I`` (a selection, a
    #: block mean): twisted SMC then needs no dense matrix. ``None``: not known.
    gram_scale: float | None = None

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def in_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``. Shapes: ``(B, *D) -> (B, *M)``."""
        x = _check_batch(x, f"{self.name}'s input")
        self.out_shape(tuple(x.shape[1:]))
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``. Shapes: ``(B, *M) -> (B, *D)``."""
        y = _check_batch(y, f"{self.name}'s adjoint input")
        self.in_shape(tuple(y.shape[1:]))
        return self._adjoint(y)

    def matrix(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The dense ``(m, D)`` float64 matrix on examples of ``shape`` (small problems only)."""
        shape = tuple(int(s) for s in shape)
        d = math.prod(shape)
        basis = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
        return self(basis).reshape(d, -1).T.contiguous()

    def _shape_error(self, shape: tuple[int, ...], want: str) -> UserInputError:
        return UserInputError(f"{self.name} takes {want}, got an example of shape {shape}")


class Mask(LinearOperator):
    """The entries where ``mask`` is 1: ``A x = x[:, mask]``, ``(B, *D) -> (B, m)``.

    Args:
        mask: 0/1 (or bool) tensor of one example's shape ``D``, with some entries 1.
    """

    name = "Mask"
    gram_scale = 1.0

    def __init__(self, mask: torch.Tensor) -> None:
        m = torch.as_tensor(mask)
        if m.ndim == 0 or m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
            raise UserInputError("mask must be a tensor of 0/1 values of one example's shape")
        self.mask = m.to(torch.bool)
        self.m = int(self.mask.sum())
        if self.m == 0:
            raise UserInputError("mask marks no entry known: nothing is measured")

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape != tuple(self.mask.shape):
            raise self._shape_error(shape, f"examples of the mask's shape {tuple(self.mask.shape)}")
        return (self.m,)

    def in_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape != (self.m,):
            raise UserInputError(f"Mask's adjoint takes (B, {self.m}), got (B, *{shape})")
        return tuple(self.mask.shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.mask.to(x.device)]

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        x = y.new_zeros(y.shape[0], *self.mask.shape)
        x[:, self.mask.to(y.device)] = y
        return x


def _check_image(shape: tuple[int, ...], op: LinearOperator) -> None:
    if len(shape) != 3:
        raise op._shape_error(shape, "images (C, H, W)")


class Downsample(LinearOperator):
    """``factor x factor`` average pooling, ``(B, C, H, W) -> (B, C, H/f, W/f)``; the adjoint
    spreads each value over its block divided by ``f^2``. H and W must be multiples of ``f``."""

    name = "Downsample"

    def __init__(self, factor: int) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise UserInputError(f"factor must be a positive integer, got {factor!r}")
        self.factor = factor
        self.gram_scale = 1.0 / factor**2  # f^2 entries of 1 / f^2 per row

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_image(shape, self)
        c, h, w = shape
        if h % self.factor or w % self.factor:
            raise self._shape_error(shape, f"H and W divisible by {self.factor}")
        return (c, h // self.factor, w // self.factor)

    def in_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_image(shape, self)
        return (shape[0], shape[1] * self.factor, shape[2] * self.factor)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3) / f**2


class Blur(LinearOperator):
    """Gaussian blur of each channel with a normalized ``size x size`` kernel of std ``sigma``
    and zero padding, ``(B, C, H, W) -> (B, C, H, W)``. The kernel is symmetric and the padding
    zero, so the operator is self-adjoint (exactly: ``adjoint`` is the same convolution)."""

    name = "Blur"

    def __init__(self, sigma: float, size: int | None = None) -> None:
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma <= 0:
            raise UserInputError(f"sigma must be a positive number, got {sigma}")
        size = 2 * math.ceil(3 * sigma) + 1 if size is None else size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise UserInputError(f"size must be a positive odd integer, got {size!r}")
        r = torch.arange(size, dtype=torch.float64) - size // 2
        k1 = torch.exp(-0.5 * (r / sigma) ** 2)
        self.sigma, self.size = sigma, size
        self.kernel = torch.outer(k1, k1) / k1.sum() ** 2

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_image(shape, self)
        return shape

    in_shape = out_shape

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w = self.kernel.to(x)[None, None].expand(c, 1, self.size, self.size)
        return F.conv2d(x, w, padding=self.size // 2, groups=c)

    _adjoint = _forward


class Projection(LinearOperator):
    """A dense matrix on flattened examples: ``A x = M vec(x)``, ``(B, *D) -> (B, m)``.

    Args:
        matrix: ``(m, D)`` with finite entries.
        shape: one example's shape (default ``(D,)``), which the adjoint returns.
    """

    name = "Projection"

    def __init__(self, matrix: torch.Tensor, *, shape: tuple[int, ...] | None = None) -> None:
        mat = torch.as_tensor(matrix)
        if mat.ndim != 2 or not mat.is_floating_point() or not bool(torch.isfinite(mat).all()):
            raise UserInputError("matrix must be a finite floating (m, D) tensor")
        self.weight = mat
        self.shape = (mat.shape[1],) if shape is None else tuple(int(s) for s in shape)
        if math.prod(self.shape) != mat.shape[1]:
            raise UserInputError(f"shape {self.shape} has {math.prod(self.shape)} entries, the "
                                 f"matrix takes {mat.shape[1]}")

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape != self.shape:
            raise self._shape_error(shape, f"examples of shape {self.shape}")
        return (self.weight.shape[0],)

    def in_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape != (self.weight.shape[0],):
            raise UserInputError(f"Projection's adjoint takes (B, {self.weight.shape[0]}), "
                                 f"got (B, *{shape})")
        return self.shape

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.to(x).T

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.weight.to(y)).reshape(y.shape[0], *self.shape)


class Colorize(LinearOperator):
    """The grey image, the channel mean: ``(B, 3, H, W) -> (B, 1, H, W)``; the adjoint puts
    ``y / 3`` on each channel."""

    name = "Colorize"
    gram_scale = 1.0 / 3  # three entries of 1/3 per row

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_image(shape, self)
        if shape[0] != 3:
            raise self._shape_error(shape, "RGB images (3, H, W)")
        return (1, *shape[1:])

    def in_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_image(shape, self)
        if shape[0] != 1:
            raise UserInputError(f"Colorize's adjoint takes grey images (1, H, W), got {shape}")
        return (3, *shape[1:])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(-1, 3, -1, -1) / 3


class FunctionOperator(LinearOperator):
    """A user's linear ``forward(x)`` on examples of ``shape``; ``adjoint`` given, or the
    vector-Jacobian product of ``forward`` (exact for a linear map). Its linearity is not assumed:
    :func:`check_linear` probes it where it matters."""

    name = "FunctionOperator"

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...],
                 adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not callable(forward) or (adjoint is not None and not callable(adjoint)):
            raise UserInputError("forward (and adjoint, if given) must be callables")
        self.fn, self.adj, self.shape = forward, adjoint, tuple(int(s) for s in shape)
        probe = forward(torch.zeros(1, *self.shape, dtype=torch.float64))
        self.m_shape = tuple(probe.shape[1:])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape != self.shape:
            raise self._shape_error(shape, f"examples of shape {self.shape}")
        return self.m_shape

    def in_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if shape != self.m_shape:
            raise UserInputError(f"the adjoint takes (B, *{self.m_shape}), got (B, *{shape})")
        return self.shape

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.adj is not None:
            return self.adj(y)
        with torch.enable_grad():
            x = torch.zeros(y.shape[0], *self.shape, dtype=y.dtype, device=y.device,
                            requires_grad=True)
            return torch.autograd.grad(self.fn(x), x, y)[0]


def check_linear(op: Any, shape: tuple[int, ...], *, rtol: float = 1e-6) -> LinearOperator:
    """``op`` if it is a :class:`LinearOperator` that is linear on examples of ``shape`` and whose
    adjoint is its transpose, by a cheap probe in float64 on two fixed random inputs:
    ``A(a x1 + b x2) = a A x1 + b A x2`` and ``<A x1, y> = <x1, A^T y>``.

    Raises:
        UserInputError: not an operator, a shape it does not take, or a failed probe.
    """
    if not isinstance(op, LinearOperator):
        raise UserInputError(f"op must be a sde_gen.inverse operator (Mask, Downsample, Blur, "
                             f"Projection, Colorize, FunctionOperator), got {type(op).__name__}")
    shape = tuple(int(s) for s in shape)
    m_shape = op.out_shape(shape)
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(1, *shape, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.randn(1, *m_shape, generator=g, dtype=torch.float64)
    a, b = 0.7, -1.3
    lhs, rhs = op(a * x1 + b * x2), a * op(x1) + b * op(x2)
    scale = float(rhs.abs().max()) + float(op(x1).abs().max()) + 1e-12
    if not bool(torch.isfinite(lhs).all()) or float((lhs - rhs).abs().max()) > rtol * scale:
        raise UserInputError(f"{op.name} is not linear (A(a x1 + b x2) != a A x1 + b A x2): "
                             f"only linear measurements are supported")
    ax, aty = (op(x1) * y).sum(), (x1 * op.adjoint(y)).sum()
    if float((ax - aty).abs()) > rtol * (float(op(x1).norm() * y.norm()) + 1e-12):
        raise UserInputError(f"{op.name}'s adjoint is not its transpose "
                             f"(<A x, y> = {float(ax):.6g}, <x, A^T y> = {float(aty):.6g})")
    return op
