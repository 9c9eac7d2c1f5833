"""Class labels bound to a class-conditional model: plain conditioning and classifier-free guidance.

A class-conditional eps-model is called ``model(x, t, y)`` (``y`` a ``(B,)`` int64 tensor in
``0..num_classes``, ``num_classes`` being the null label) and exposes ``model.num_classes``.
Every sampler takes the unconditional type ``(x, t) -> eps``; the wrappers here bind the labels
and return that type, so one guided model works with every solver of
:func:`~sde_gen.sampling.sample` (and with :func:`~sde_gen.sampling.impute`):

- :func:`conditional`: ``eps(x, t, y)``;
- :func:`classifier_free`: ``(1 + w) eps(x, t, y) - w eps(x, t, null)`` ([Ho22] Eq. 6),
  both terms from ONE batched call on ``2B`` rows. ``sample()`` counts calls, so a guided step
  costs one NFE per batched call, as for an unconditional model; the network itself does twice
  the rows' work (the usual accounting of guided samplers).

``w = 0`` is the conditional model exactly (one call on ``B`` rows); ``w > 0`` sharpens the
class: with exact scores the guided score is that of ``p(x | y)^(1 + w) / p(x)^w`` at each time,
in general not the score of any one noised distribution ([Ho22] Sec. 3.2).

Refs: [Ho22] Eq. (6), Alg. 2; [Dhariwal21] (class-conditional networks).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import UserInputError
from .parameterization import EpsModel

__all__ = ["classifier_free", "conditional", "num_classes_of"]


def num_classes_of(model: Any) -> int:
    """``model.num_classes``, which must be a positive int: the model is class-conditional.

    Raises:
        UserInputError: the model has no ``num_classes`` or it is ``None`` (unconditional).
    """
    k = getattr(model, "num_classes", None)
    if k is None or isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserInputError("guidance needs a class-conditional model (one with num_classes, "
                             "e.g. trained with model.class_cond); this one takes no labels")
    return k


def _check_labels(y: Any, k: int, *, allow_null: bool) -> torch.Tensor:
    """``y`` (an int, a sequence or a tensor of labels) as a 0-d or 1-d int64 tensor, checked."""
    if isinstance(y, bool) or (torch.is_tensor(y) and y.dtype == torch.bool):
        raise UserInputError(f"class labels must be integers, got {y!r}")
    try:
        labels = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(f"class labels must be an int or a (B,) tensor of ints, got "
                             f"{type(y).__name__}") from None
    if labels.is_floating_point() or labels.is_complex():
        raise UserInputError(f"class labels must be integers, got {labels.dtype}")
    if labels.ndim > 1:
        raise UserInputError(f"class labels must be an int or a (B,) tensor, got shape "
                             f"{tuple(labels.shape)}")
    if labels.numel() == 0:
        raise UserInputError("class labels must not be empty")
    hi = k if allow_null else k - 1
    lo_v, hi_v = int(labels.min()), int(labels.max())
    if lo_v < 0 or hi_v > hi:
        null = f" ({k} is the null label)" if allow_null else f" (not the null label {k})"
        raise UserInputError(f"class label {lo_v if lo_v < 0 else hi_v} is outside the model's "
                             f"classes 0..{hi}{null}")
    return labels.long()


def _check_scale(scale: Any) -> float:
    if torch.is_tensor(scale) and scale.numel() == 1 and scale.dtype != torch.bool:
        scale = float(scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise UserInputError(f"guidance scale must be a number, got {scale!r}")
    if not math.isfinite(scale) or scale < 0:
        raise UserInputError(f"guidance scale must be finite and >= 0, got {scale!r}")
    return float(scale)


class _Labelled:
    """Shared part of the wrappers: the model, its class count and the bound labels."""

    def __init__(self, model: Any, y: Any, *, allow_null: bool) -> None:
        self.num_classes_cond = num_classes_of(model)
        self.model = model
        self.y = _check_labels(y, self.num_classes_cond, allow_null=allow_null)

    #: The wrapper takes no labels itself: it is an unconditional eps-model.
    num_classes = None

    @property
    def learn_variance(self) -> bool:
        """Whether the wrapped model learns its reverse variance ([Nichol21] Eq. 15)."""
        return bool(getattr(self.model, "learn_variance", False))

    @property
    def predicts_x0(self) -> bool:
        """Whether the wrapped model gives its own x0 (``predict``), finite at ``alpha_t = 0``."""
        return bool(getattr(self.model, "predicts_x0", False))

    def labels(self, batch: int, device: torch.device) -> torch.Tensor:
        """The bound labels as a ``(batch,)`` tensor (an int broadcast to every row)."""
        if self.y.device != device:  # moved once, not at every call
            self.y = self.y.to(device)
        y = self.y
        if y.ndim == 0 or y.shape[0] == 1:
            return y.reshape(1).expand(batch)
        if y.shape[0] != batch:
            raise UserInputError(f"{y.shape[0]} class labels for a batch of {batch} rows; pass "
                                 f"one label (an int) or one per row")
        return y


class _Conditional(_Labelled):
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, self.labels(x.shape[0], x.device))

    def eps_and_variance(self, x: torch.Tensor, t: torch.Tensor):
        """The wrapped model's ``(eps, v)`` with the bound labels."""
        return self.model.eps_and_variance(x, t, self.labels(x.shape[0], x.device))

    def predict(self, x: torch.Tensor, t: torch.Tensor):
        """The wrapped model's ``(eps, x0)`` with the bound labels."""
        return self.model.predict(x, t, self.labels(x.shape[0], x.device))


class _ClassifierFree(_Labelled):
    def __init__(self, model: Any, y: Any, scale: float) -> None:
        super().__init__(model, y, allow_null=False)
        self.scale = scale

    def _doubled(self, x: torch.Tensor, t: torch.Tensor) -> tuple:
        y = self.labels(x.shape[0], x.device)
        null = torch.full_like(y, self.num_classes_cond)
        return torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])

    def _combine(self, eps: torch.Tensor) -> torch.Tensor:
        eps_cond, eps_null = eps.chunk(2)
        w = self.scale
        return (1 + w) * eps_cond - w * eps_null  # Eq. (6) [Ho22]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.scale == 0:  # exactly the conditional model, at half the cost
            return self.model(x, t, self.labels(x.shape[0], x.device))
        return self._combine(self.model(*self._doubled(x, t)))

    def predict(self, x: torch.Tensor, t: torch.Tensor):
        """Guided ``(eps, x0)``: x0 is affine in eps with the same coefficients, so the guided
        x0 is the same combination of the two x0 (finite where ``alpha_t = 0``)."""
        if self.scale == 0:
            return self.model.predict(x, t, self.labels(x.shape[0], x.device))
        eps, x0 = self.model.predict(*self._doubled(x, t))
        return self._combine(eps), self._combine(x0)

    def eps_and_variance(self, x: torch.Tensor, t: torch.Tensor):
        """Guided eps and the conditional half's learned variance (as GLIDE and ADM do)."""
        if self.scale == 0:
            return self.model.eps_and_variance(x, t, self.labels(x.shape[0], x.device))
        eps, v = self.model.eps_and_variance(*self._doubled(x, t))
        return self._combine(eps), (None if v is None else v.chunk(2)[0])


def conditional(model: Any, y: int | torch.Tensor | None) -> EpsModel:
    """The class-conditional model with its labels bound: ``(x, t) -> eps(x, t, y)``.

    Args:
        model: a class-conditional eps-model ``model(x, t, y)`` with ``model.num_classes``
            (:class:`~sde_gen.parameterization.ScoreModel` on a net with ``num_classes``,
            :class:`~sde_gen.analytic.ExactClassModel`).
        y: a label in ``0..num_classes - 1`` for every row, a ``(B,)`` tensor of labels (one per
            row of the batch it is called on), or ``num_classes`` / ``None`` for the null label
            (the unconditional model that label dropout trains).

    Returns:
        An eps-model ``(x, t) -> eps`` for any solver; it has ``eps_and_variance`` for
        ``variance="learned"`` when the wrapped model learns its variance.

    Raises:
        UserInputError: an unconditional model, labels that are not integers or are out of range;
            when called, a ``(B,)`` label tensor whose size is not the batch's.

    Shapes: ``x (B, *D)``, ``t (B,)`` -> ``(B, *D)``.
    """
    k = num_classes_of(model)
    return _Conditional(model, k if y is None else y, allow_null=True)


def classifier_free(model: Any, y: int | torch.Tensor, scale: float) -> EpsModel:
    """Classifier-free guidance: ``(x, t) -> (1 + w) eps(x, t, y) - w eps(x, t, null)``.

    Both terms come from ONE call of the model on the ``2B`` rows ``cat(x, x)`` with labels
    ``cat(y, null)``; :func:`~sde_gen.sampling.sample` counts it as one NFE (it counts batched
    calls). ``w = 0`` returns the conditional model's output exactly, from a ``B``-row call.

    Args:
        model: a class-conditional eps-model ``model(x, t, y)`` with ``model.num_classes``,
            trained with label dropout so that the null label ``num_classes`` is unconditional.
        y: a label in ``0..num_classes - 1`` for every row, or a ``(B,)`` tensor of them.
        scale: the guidance weight ``w >= 0`` ([Ho22]'s ``w``; ``1 + w`` is the "CFG scale" of
            other libraries).

    Returns:
        An eps-model ``(x, t) -> eps`` for any solver (with ``eps_and_variance``, taking the
        conditional half's variance, when the model learns its variance).

    Raises:
        UserInputError: an unconditional model, bad labels (the null label included), a
            negative, infinite or NaN scale; when called, a label tensor of the wrong size.

    Shapes: ``x (B, *D)``, ``t (B,)`` -> ``(B, *D)``.

    Refs: [Ho22] Eq. (6).
    """
    num_classes_of(model)
    return _ClassifierFree(model, y, _check_scale(scale))
