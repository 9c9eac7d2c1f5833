"""The one place where the network output becomes eps, score or x0.

The package-wide model contract is a callable ``model(x, t) -> eps_hat`` with ``t`` a ``(B,)``
tensor of continuous SDE time. With ``x_t = alpha_t x0 + sigma_t eps``:

- score ``s = -eps / sigma_t``                                   [Song21] Eq. (7) with DSM target
- denoiser ``x0_hat = (x_t - sigma_t eps) / alpha_t``            (Tweedie's formula)
- v ``v = alpha_t eps - sigma_t x0``                               [Salimans22] Eq. (7), generalized
- velocity ``u = alpha_t' x0 + sigma_t' eps`` (flow matching)      [Lipman23] Eq. (15)
- learned reverse variance ``Sigma = exp(v log beta + (1 - v) log beta~)``    [Nichol21] Eq. (15)

Every solver, the final denoising step and the VLB convert through
:func:`eps_to_x0`, :func:`x0_to_eps` and :func:`eps_to_score` (per-example ``(B,)`` or scalar
coefficients); :data:`EpsModel` is the model type everywhere. Where ``alpha_t = 0`` (``T`` of
a flow path) x0 is ``0/0`` from eps alone: there the solvers take ``(eps, x0)`` from the model
itself (:func:`model_prediction`; :meth:`ScoreModel.predict` computes both from the network's
raw output, finite wherever its prediction type allows).

Refs: [Ho20] Eq. (11); [Karras22] Table 1 (c_in); [Nichol21] Eq. (15); [Lipman23] Eq. (15).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import UserInputError
from .sde import SDE
from .tensor_utils import append_dims

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EpsVarModel = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
PREDICTIONS = ("eps", "x0", "v", "velocity", "edm")
NOISE_CONDS = ("t", "logsnr")


def eps_to_score(eps: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """``score = -eps / sigma_t``. Shapes: ``eps (B, *D)``, ``sigma_t (B,)``."""
    return -eps / append_dims(sigma_t, eps.ndim)


def score_to_eps(score: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """``eps = -sigma_t score``, the inverse of :func:`eps_to_score`."""
    return -append_dims(sigma_t, score.ndim) * score


def eps_to_x0(
    x: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """``x0_hat = (x_t - sigma_t eps) / alpha_t``."""
    n = x.ndim
    return (x - append_dims(sigma_t, n) * eps) / append_dims(alpha_t, n)


def x0_to_eps(
    x: torch.Tensor, x0: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """``eps = (x_t - alpha_t x0) / sigma_t``."""
    n = x.ndim
    return (x - append_dims(alpha_t, n) * x0) / append_dims(sigma_t, n)


def v_to_eps(
    x: torch.Tensor, v: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """``eps = (alpha_t v + sigma_t x_t) / (alpha_t^2 + sigma_t^2)`` for
    ``v = alpha_t eps - sigma_t x0``."""
    n = x.ndim
    a, s = append_dims(alpha_t, n), append_dims(sigma_t, n)
    return (a * v + s * x) / (a**2 + s**2)


def log_variance_from_v(
    v: torch.Tensor, beta: torch.Tensor, beta_tilde: torch.Tensor
) -> torch.Tensor:
    """``log Sigma = v log beta + (1 - v) log beta~``, the learned reverse variance's log.

    ``v`` is the raw network output, unconstrained as in the paper: ``v = 1`` gives ``beta``,
    ``v = 0`` gives ``beta~`` (the zero-initialized output layer starts there), values outside
    ``[0, 1]`` extrapolate in log space. ``beta`` and ``beta~`` are the interval's forward and
    posterior variances on whatever grid is walked: on a respaced (strided) grid ``s < t`` they
    are ``1 - abar_t / abar_s`` and ``beta (1 - abar_s) / (1 - abar_t)`` ([Nichol21] Sec. 4),
    which :func:`~sde_gen.chain.posterior_coeffs` returns. ``beta~`` must be positive
    (the interval into the clean end uses the next one's, as DDPM's code clips it).

    Shapes: ``v (B, *D)``; ``beta``, ``beta_tilde`` scalars or ``(B,)`` -> ``(B, *D)``.
    Refs: [Nichol21] Eq. (15).
    """
    n = v.ndim
    log_beta = append_dims(torch.as_tensor(beta).log(), n).to(v.dtype)
    log_beta_tilde = append_dims(torch.as_tensor(beta_tilde).log(), n).to(v.dtype)
    return v * log_beta + (1 - v) * log_beta_tilde  # Eq. (15) [Nichol21]


def v_from_log_variance(
    log_var: torch.Tensor, beta: torch.Tensor, beta_tilde: torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`log_variance_from_v`: the ``v`` that gives ``log Sigma = log_var``."""
    n = log_var.ndim
    log_beta = append_dims(torch.as_tensor(beta).log(), n).to(log_var.dtype)
    log_beta_tilde = append_dims(torch.as_tensor(beta_tilde).log(), n).to(log_var.dtype)
    return (log_var - log_beta_tilde) / (log_beta - log_beta_tilde)


def learned_variance_fn(model: object) -> EpsVarModel:
    """``model.eps_and_variance``, checked: the model must learn its reverse variance.

    A model qualifies when ``model.learn_variance`` is true and it has ``eps_and_variance(x, t)
    -> (eps, v)`` (:class:`ScoreModel` built with ``learn_variance=True``).

    Raises:
        ValueError: for a model with a fixed variance.
    """
    if not getattr(model, "learn_variance", False) or not hasattr(model, "eps_and_variance"):
        raise UserInputError("variance='learned' needs a model that learns its reverse variance "
                         "(config model.learn_variance=true, ScoreModel(..., learn_variance=True));"
                         " this one has a fixed variance: use beta or beta_tilde")
    return model.eps_and_variance


def model_name(model: object) -> str:
    """How messages name a model: its function or class name."""
    return getattr(model, "__qualname__", None) or type(model).__name__


def check_model_output(model: object, out: object, x: torch.Tensor) -> torch.Tensor:
    """``out`` if it is a floating tensor of ``x``'s shape, as ``model(x, t)`` must return.

    A wrong shape would otherwise broadcast silently (a ``(1, D)`` or 0-d output) or fail deep
    inside a solver; the samplers and likelihoods check the first call of every solve.

    Raises:
        UserInputError: naming the model, what it returned and what was expected.
    """
    if not torch.is_tensor(out):
        raise UserInputError(f"model {model_name(model)} returned a {type(out).__name__}, not a "
                             f"tensor of eps of shape {tuple(x.shape)}")
    if out.shape != x.shape:
        raise UserInputError(f"model {model_name(model)} returned shape {tuple(out.shape)} for an "
                             f"input of shape {tuple(x.shape)}; an eps-model returns the input's "
                             f"shape")
    if not out.is_floating_point():
        raise UserInputError(f"model {model_name(model)} returned {out.dtype}; an eps-model "
                             f"returns floating-point values")
    return out


def predicts_x0(model: object) -> bool:
    """Whether ``model`` gives its own x0 (``model.predict(x, t) -> (eps, x0)``, finite where
    ``alpha_t = 0``): a :class:`ScoreModel` predicting anything but eps, the package's wrappers
    of one, or any model with such a ``predict`` and ``predicts_x0 = True``."""
    return callable(getattr(model, "predict", None)) and bool(getattr(model, "predicts_x0", False))


def model_prediction(model: Any, x: torch.Tensor, t: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps, x0)`` from one call of a model that predicts x0 itself (:func:`predicts_x0`):
    what the solvers use where ``alpha_t = 0``, x0 being ``0/0`` there from eps alone.

    Raises:
        UserInputError: the model gives eps only.
    """
    if not predicts_x0(model):
        raise UserInputError(f"model {model_name(model)} gives eps only, and x0 = (x - sigma eps)"
                             f" / alpha is 0/0 where alpha_t = 0 (T of a flow path): sample "
                             f"from T with a model that predicts x0, v or the velocity "
                             f"(ScoreModel(prediction=...)), or start below T (ts)")
    eps, x0 = model.predict(x, t)
    return check_model_output(model, eps, x), x0


class CountingModel:
    """Wraps ``model(x, t)`` and counts its calls (the reported NFE); the first call's output is
    checked (:func:`check_model_output`)."""

    def __init__(self, model: EpsModel) -> None:
        self.model, self.nfe, self._checked = model, 0, False

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.model(x, t)
        if not self._checked:
            check_model_output(self.model, out, x)
            self._checked = True
        return out

    @property
    def learn_variance(self) -> bool:
        """Whether the wrapped model learns its reverse variance ([Nichol21] Eq. 15)."""
        return bool(getattr(self.model, "learn_variance", False))

    @property
    def predicts_x0(self) -> bool:
        """Whether the wrapped model gives its own x0 (:func:`predicts_x0`)."""
        return predicts_x0(self.model)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped model's ``(eps, x0)`` (:func:`model_prediction`), counted as one call."""
        self.nfe += 1
        eps, x0 = model_prediction(self.model, x, t)
        self._checked = True
        return eps, x0

    @property
    def is_consistency_model(self) -> bool:
        """Whether the wrapped model is a distilled consistency model
        (:func:`sde_gen.consistency.is_consistency_model`)."""
        return bool(getattr(self.model, "is_consistency_model", False))

    @property
    def t_min(self) -> float | None:
        """The wrapped consistency model's boundary time (``None`` for other models)."""
        return getattr(self.model, "t_min", None)

    def consistency(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The wrapped consistency model's ``f(x, t)``, counted as one call."""
        self.nfe += 1
        out = self.model.consistency(x, t)
        if not self._checked:
            check_model_output(self.model, out, x)
            self._checked = True
        return out

    def eps_and_variance(self, x: torch.Tensor, t: torch.Tensor):
        """The wrapped model's ``(eps, v)``, counted as one call."""
        fn = learned_variance_fn(self.model)
        self.nfe += 1
        eps, v = fn(x, t)
        if not self._checked:
            check_model_output(self.model, eps, x)
            self._checked = True
        return eps, v


def score_fn(model: EpsModel, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap an eps-model as the score function ``s(x, t) = -model(x, t) / sigma_t``."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps_to_score(model(x, t), sde.marginal_coeffs(t)[1])

    return score


def denoise_fn(model: EpsModel, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap an eps-model as the Tweedie denoiser ``x0_hat(x, t)``."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_t, sigma_t = sde.marginal_coeffs(t)
        return eps_to_x0(x, model(x, t), alpha_t, sigma_t)

    return denoise


class ScoreModel(nn.Module):
    """An eps-model built from a network ``net(x_in, c_noise)`` that knows nothing about SDEs.

    The network sees the input scaled to unit variance, ``x_in = x_t / sqrt(alpha_t^2 s_d^2 +
    sigma_t^2)`` ([Karras22] ``c_in``; the identity for VP with unit-variance data, essential for
    VE where ``sigma_t`` reaches 50), and a noise level ``c_noise``: the time ``t`` itself
    (``noise_cond="t"``, score_sde's and DDPM's convention) or the half log-SNR
    ``lambda_t = log(alpha_t / sigma_t)`` (``"logsnr"``; EDM's ``c_noise = ln(sigma)/4`` up to
    scale, [Karras22] Table 1), which is smooth where ``t`` is not (``lambda`` changes like
    ``log t`` near 0) and the same variable for every SDE. Its raw output is read as eps, x0, v or
    EDM's ``F`` (``prediction``) and converted to eps here. Three methods name the three views:
    :meth:`eps`, :meth:`score` and :meth:`denoise` (x0). ``forward`` (``model(x, t)``) is
    :meth:`eps`, because the package's model contract (:data:`EpsModel`, what every sampler and
    likelihood takes) is an eps-model. The module never changes train/eval mode.

    ``prediction="edm"``: with ``sigma = sigma_t / alpha_t`` and ``r = sqrt(sigma^2 + s_d^2)``,
    EDM's denoiser ``D = c_skip x/alpha + c_out F`` (``c_skip = s_d^2 / r^2``,
    ``c_out = sigma s_d / r``, [Karras22] Table 1) gives ``eps = (sigma/r) x_in - (s_d/r) F``,
    written in that form because it does not cancel at small ``sigma``. ``c_skip`` is the exact
    denoiser of ``N(0, s_d^2 I)`` data: the network learns the correction to a Gaussian.

    ``learn_variance=True`` ([Nichol21] Sec. 3.1): the network has twice the channels (dim 1);
    the first half is the prediction above, the second the raw ``v`` of the reverse variance
    ``Sigma = exp(v log beta + (1 - v) log beta~)`` (:func:`log_variance_from_v`). ``forward``
    still returns eps only, so every sampler and likelihood works unchanged;
    :meth:`eps_and_variance` returns both. It needs a DDPM chain (VP or sub-VP), not VE.

    dtypes: the network runs in its weights' dtype and everything around it in ``x``'s, so a
    float32 model samples a float64 (or float16) solver state; for a half-precision network,
    convert the model (``model.half()``) or use autocast.

    Class conditioning: a network with an integer ``num_classes`` attribute (the MLP and U-Net
    built with ``num_classes``) makes a class-conditional model, ``model(x, t, y)`` with labels
    ``y`` in ``0..num_classes - 1`` or the null label ``num_classes`` ("no class", the
    unconditional model that label dropout trains for classifier-free guidance, [Ho22] Sec. 3.2);
    ``y=None`` means the null label for every example, so every sampler, which calls
    ``model(x, t)``, draws from the unconditional model. :mod:`sde_gen.guidance` binds labels.

    Args:
        net: ``net(x_in, c_noise) -> output`` of the shape of ``x`` (``net(x_in, c_noise, y)``
            when it has a ``num_classes``).
        sde: the forward SDE whose ``marginal_coeffs`` define the conversions.
        prediction: what the network predicts: ``"eps"`` (default), ``"x0"``, ``"v"`` or ``"edm"``.
        sigma_data: data standard deviation used in the input scaling and EDM's coefficients.
        noise_cond: ``"t"`` or ``"logsnr"``: what the network is conditioned on.
        learn_variance: the network also outputs ``v`` (twice the data's channels).
    """

    def __init__(
        self, net: nn.Module, sde: SDE, *, prediction: str = "eps", sigma_data: float = 1.0,
        noise_cond: str = "t", learn_variance: bool = False,
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise UserInputError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if noise_cond not in NOISE_CONDS:
            raise UserInputError(f"unknown noise_cond {noise_cond!r}; choose one of {NOISE_CONDS}")
        if not sigma_data > 0:
            raise UserInputError(f"sigma_data must be positive, got {sigma_data}")
        self.net, self.sde, self.prediction, self.sigma_data = net, sde, prediction, sigma_data
        if noise_cond == "logsnr" and sde.pure_noise_at_T:
            raise UserInputError("noise_cond='logsnr' feeds the log-SNR to the network, and it is "
                                 "-inf at T on this path (alpha_T = 0); use noise_cond='t'")
        if learn_variance and not sde.has_ddpm_chain:
            raise UserInputError(
                "learn_variance needs a DDPM chain (VP or sub-VP); VE has no beta_t"
            )
        self.noise_cond, self.learn_variance = noise_cond, bool(learn_variance)

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model (its null label is this number),
        or ``None`` for an unconditional one."""
        n = getattr(self.net, "num_classes", None)
        return int(n) if n else None

    def labels(self, y: torch.Tensor | int | None, batch: int,
               device: torch.device | None = None) -> torch.Tensor | None:
        """``y`` checked and made a ``(batch,)`` int64 tensor (an int or a 0-d tensor is
        broadcast; ``None`` becomes the null label); ``None`` for an unconditional model.

        Raises:
            UserInputError: labels for an unconditional model, labels that are not integers, of
                the wrong shape, or outside ``0..num_classes`` (``num_classes``: the null label).
        """
        k = self.num_classes
        if k is None:
            if y is not None:
                raise UserInputError("this model is unconditional (trained without "
                                     "model.class_cond); it takes no class labels")
            return None
        if y is None:
            return torch.full((batch,), k, dtype=torch.long, device=device)
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise UserInputError(f"class labels must be integers, got {y.dtype}")
        if y.ndim == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise UserInputError(f"class labels must have shape ({batch},), got {tuple(y.shape)}")
        compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)()
        if not compiling and batch:
            lo, hi = torch.stack(torch.aminmax(y)).tolist()  # one host sync (not under compile)
            if lo < 0 or hi > k:
                raise UserInputError(f"class label {lo if lo < 0 else hi} is outside the "
                                     f"model's classes 0..{k - 1} ({k} is the null label)")
        return y.long()

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | int | None = None, *,
        with_variance: bool = False, with_x0: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """eps_hat(x, t) (a class-conditional model: eps_hat(x, t, y)); with
        ``with_variance=True`` the pair ``(eps_hat, v)`` (``v`` None without a learned variance);
        with ``with_x0=True`` the pair ``(eps_hat, x0_hat)`` (:meth:`predict`). The keywords exist
        so that wrappers of ``forward`` (DDP, ``torch.compile``) see the call.
        Shapes: ``x (B, *D)``, ``t (B,)``, ``y (B,)`` int64 or None -> ``(B, *D)``."""
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise UserInputError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        y = self.labels(y, x.shape[0], x.device)
        cond = () if y is None else (y,)
        alpha_t, sigma_t = self.sde.marginal_coeffs(t)
        s_d = self.sigma_data
        c_in = torch.rsqrt(alpha_t**2 * s_d**2 + sigma_t**2)
        x_in = x * append_dims(c_in, x.ndim).to(x.dtype)
        c_noise = t if self.noise_cond == "t" else torch.log(alpha_t) - torch.log(sigma_t)
        weights = next(self.net.parameters(), None)
        if weights is not None and weights.dtype != x.dtype and x.is_floating_point():
            # The solver's state may be wider or narrower than the weights (sample(dtype=...)):
            # the network computes in its own dtype, the conversions around it in x's.
            out = self.net(x_in.to(weights.dtype), c_noise.to(weights.dtype), *cond).to(x.dtype)
        else:
            out = self.net(x_in, c_noise, *cond)
        v = None
        if self.learn_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise UserInputError(f"learn_variance: the network must output {2 * x.shape[1]} "
                                     f"channels (eps and v), got {out.shape[1]}")
            out, v = out.chunk(2, dim=1)
        eps, x0 = self._to_eps_x0(x, x_in, out, t, alpha_t, sigma_t, with_x0)
        if with_x0:
            return eps, x0
        return (eps, v) if with_variance else eps

    @property
    def predicts_x0(self) -> bool:
        """Whether :meth:`predict` gives a finite x0 where ``alpha_t = 0`` (the flow paths'
        ``T``): every prediction but ``eps``, which carries no information about x0 there."""
        return self.prediction != "eps"

    def _to_eps_x0(self, x, x_in, out, t, alpha_t, sigma_t, with_x0: bool):
        """``(eps, x0)`` from the network's raw output (``x0`` None unless ``with_x0``), each
        written in a form that stays finite where ``alpha_t`` is 0 whenever the prediction
        allows it."""
        n, dt = x.ndim, x.dtype

        def col(c: torch.Tensor) -> torch.Tensor:
            return append_dims(c, n).to(dt)

        if self.prediction == "eps":
            return out, eps_to_x0(x, out, alpha_t, sigma_t) if with_x0 else None
        if self.prediction == "x0":
            return x0_to_eps(x, out, alpha_t, sigma_t), out
        if self.prediction == "v":  # v = alpha eps - sigma x0, [Salimans22] Eq. (7)
            norm = alpha_t**2 + sigma_t**2
            eps = v_to_eps(x, out, alpha_t, sigma_t)
            return eps, (col(alpha_t / norm) * x - col(sigma_t / norm) * out) if with_x0 else None
        if self.prediction == "velocity":  # u = alpha' x0 + sigma' eps, [Lipman23] Eq. (15)
            d_alpha, d_sigma = self.sde.marginal_coeffs_derivative(t)
            det = alpha_t * d_sigma - sigma_t * d_alpha  # > 0: the SNR falls along the path
            eps = col(alpha_t / det) * out - col(d_alpha / det) * x
            return eps, (col(d_sigma / det) * x - col(sigma_t / det) * out) if with_x0 else None
        # edm: D = c_skip x/alpha + c_out F ([Karras22] Table 1). With q = sqrt(sigma^2 +
        # alpha^2 s_d^2) = 1/c_in: eps = (sigma/q) x_in - (s_d alpha/q) F and
        # x0 = (s_d^2 alpha/q) x_in + (sigma s_d/q) F, finite at alpha = 0 (sigma~ = inf).
        s_d = self.sigma_data
        q = torch.sqrt(sigma_t**2 + alpha_t**2 * s_d**2)
        eps = col(sigma_t / q) * x_in - col(s_d * alpha_t / q) * out
        x0 = col(s_d**2 * alpha_t / q) * x_in + col(sigma_t * s_d / q) * out if with_x0 else None
        return eps, x0

    def eps_and_variance(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(eps_hat, v)``: ``v`` the raw variance output of [Nichol21] Eq. (15), or None when the
        variance is not learned. Shapes: ``(B, *D)`` each."""
        return self(x, t, y, with_variance=True)

    def eps(self, x: torch.Tensor, t: torch.Tensor,
            y: torch.Tensor | int | None = None) -> torch.Tensor:
        """The noise prediction ``eps_hat(x, t)`` (what ``forward`` returns).
        Shapes: ``x (B, *D)``, ``t (B,)`` -> ``(B, *D)``."""
        return self(x, t, y)

    def score(self, x: torch.Tensor, t: torch.Tensor,
              y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Score ``-eps_hat / sigma_t``."""
        return eps_to_score(self(x, t, y), self.sde.marginal_coeffs(t)[1])

    def predict(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps_hat, x0_hat)`` from one network call, each from the network's own output, so
        x0 is finite where ``alpha_t = 0`` for every prediction but ``eps``
        (:attr:`predicts_x0`)."""
        return self(x, t, y, with_x0=True)

    def denoise(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Tweedie's estimate of x0 (:meth:`predict`'s)."""
        return self.predict(x, t, y)[1]
