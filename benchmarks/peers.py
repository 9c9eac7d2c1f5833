"""The peers of the benchmarks and what every benchmark shares to drive them.

Everything that touches k-diffusion or diffusers lives here, together with the helpers the
benchmark scripts share:

- :func:`import_kdiffusion` and :func:`import_diffusers`: the optional peers (pyproject extra
  ``bench``), each ``None`` after a one-line note naming that extra when it cannot be imported;
- :func:`kdiffusion_denoiser` (k-diffusion's ``D(x_ve, sigma)`` from one of our models on any
  of our SDEs) and :func:`ve_sigma` (its noise level of one of our times);
- :func:`resolve_device` (a benchmark's ``--device``), :func:`sync` and :func:`timed`;
- :func:`build_unet` (our U-Net of a preset) and :func:`peer_unet`, a diffusers
  ``UNet2DModel`` of the same size;
- a toy 2-D diffusers peer: :class:`PeerMLP` (an eps-network of the size of our
  ``sde_gen.nets.mlp.MLP`` built from diffusers' timestep embedding), :func:`train_toy_peer` and
  :func:`sample_toy_peer`;
- an image diffusers peer: :func:`train_image_peer` and :func:`sample_image_peer` with
  ``UNet2DModel``.

Both diffusers peers train the way diffusers'
``examples/unconditional_image_generation/train_unconditional.py`` does, with that example's
defaults:

- ``DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")``,
  integer timesteps ``torch.randint(0, 1000)``, ``scheduler.add_noise``, MSE to the noise;
- ``AdamW(lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)``;
- ``diffusers.optimization.get_scheduler("cosine", num_warmup_steps=500, num_training_steps=N)``
  stepped after every optimizer step (the lr is 0 at step 0 and reaches 0 again at step N);
- gradient-norm clipping at 1.0;
- ``diffusers.training_utils.EMAModel(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
  power=3/4)`` stepped after every optimizer step; the returned network is the EMA one. (The
  example's ``--use_ema`` is a ``store_true`` flag that is *off* unless passed; its ``train.sh``
  passes it, and so do we.)
- the loss is read back (``.item()``) every step, as the example does for its progress bar.

Sampling is the loop of ``DDPMPipeline``: ``x_T ~ N(0, I)``, ``scheduler.set_timesteps(steps)``,
``x = scheduler.step(eps, t, x, generator=g).prev_sample`` (ancestral, ``variance_type
"fixed_small"``).

One deviation for the toy peer: ``DDPMScheduler`` clips the predicted ``x0`` to ``[-1, 1]`` by
default (``clip_sample=True``, meant for images in ``[-1, 1]``). The 2-D datasets reach beyond
``|x| = 1`` (the 8 Gaussians sit on a circle of radius sqrt(2)), so the toy peer uses
``clip_sample=False``; the image peer keeps the default.

Training length: ``steps`` and/or ``seconds``. The run stops at ``steps`` optimizer steps or when
``seconds`` of wall clock have elapsed, whichever comes first, and the cosine schedule is laid
over ``steps``. When only ``seconds`` is given the schedule needs a length, so the first
``CALIBRATION_STEPS`` (50) real training steps double as a calibration: their rate (timed after
``CALIBRATION_SKIP`` steps of warm-up) fixes ``N = 50 + rate x (seconds left)``, then the
cosine schedule of length ``N`` is built and fast-forwarded by those 50 steps. During the
calibration the lr follows the warmup ramp ``lr x step / 500``, which does not depend on ``N``,
so the whole run follows one cosine schedule that ends (lr 0) where the time budget ends. The
run also stops at ``N`` steps if the machine turns out faster than calibrated (the first
steps tend to be slower, so a seconds-only run often ends a little before its budget). As in the
example, a run shorter than the 500 warmup steps never leaves the warmup ramp: its lr rises
linearly to ``lr x N / 500`` and the cosine part never starts.

Self-check: ``python benchmarks/peers.py --smoke`` trains the toy peer on the 8-Gaussians
mixture for 30 s on the CPU and compares its samples with the data (exact log-density, energy
distance, sliced Wasserstein, each against its noise floor). It also counts samples with
``|x| > 4``, where the data has no mass: with ``clip_sample=False`` nothing bounds the predicted
``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (``1 / sqrt(abar_t)`` is about 150 near
``t = 999``), so a short-trained network sends a few tail draws of ``x_T`` far away, and those few
points dominate E_p[log q] and the sliced Wasserstein distance; they are reported separately.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import time
import warnings
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from sde_gen.app.distributed import resolve_device as _resolve_device
from sde_gen.nets.unet import UNET_PRESETS, UNet
from sde_gen.sde import SDE
from sde_gen.tensor_utils import append_dims

R = TypeVar("R")
BENCH_EXTRA = "pip install -e '.[bench]'"
CPU = torch.device("cpu")

# Defaults of diffusers' examples/unconditional_image_generation/train_unconditional.py.
NUM_TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "linear"
LEARNING_RATE = 1e-4
ADAM_BETAS = (0.95, 0.999)
ADAM_WEIGHT_DECAY = 1e-6
ADAM_EPSILON = 1e-8
LR_SCHEDULER = "cosine"
LR_WARMUP_STEPS = 500
GRAD_CLIP = 1.0
EMA_INV_GAMMA = 1.0
EMA_POWER = 3 / 4
EMA_MAX_DECAY = 0.9999

CALIBRATION_STEPS = 50  # seconds-only runs: steps timed to size the cosine schedule
CALIBRATION_SKIP = 10  # of which the first ones are not timed (allocation, first calls)


# --------------------------------------------------------------------------------------------
# optional peers


def _import_optional(name: str, module: str):
    """``module`` imported, or ``None`` after a one-line note that names the ``bench`` extra."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip this peer"
        reason = (str(exc).splitlines() or [""])[0]
        print(f"note: {name} not available ({type(exc).__name__}: {reason}); skipping it "
              f"(the peers come with the bench extra: {BENCH_EXTRA})")
        return None


def import_kdiffusion():
    """``k_diffusion.sampling``, or ``None`` with a note when k-diffusion cannot be imported."""
    return _import_optional("k-diffusion", "k_diffusion.sampling")


def import_diffusers():
    """``diffusers``, or ``None`` with a note when it cannot be imported."""
    return _import_optional("diffusers", "diffusers")


def _require_diffusers():
    """diffusers with its training helpers imported, or ImportError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import diffusers
        import diffusers.models.embeddings  # noqa: F401
        import diffusers.optimization  # noqa: F401
        import diffusers.training_utils  # noqa: F401
    return diffusers


# --------------------------------------------------------------------------------------------
# k-diffusion adapter


def ve_sigma(sde: SDE, t: float) -> float:
    """k-diffusion's noise level of our time ``t``: ``sigma_t / alpha_t`` (float64).

    k-diffusion works on the variance-exploding state ``x_ve = x_t / alpha_t``, whose noise level
    is ``sigma_t / alpha_t = exp(-lambda_t)``.
    """
    alpha_t, sigma_t = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    return float(sigma_t / alpha_t)


def kdiffusion_denoiser(sde: SDE, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        *, prediction: str = "eps") -> Callable[..., torch.Tensor]:
    """k-diffusion's denoiser ``D(x_ve, sigma)`` from our ``model(x_t, t)`` on ``sde``.

    ``sigma`` maps to our time ``t = sde.t_from_log_snr(-log sigma)`` (in float64), the model
    is called at ``x_t = alpha_t x_ve`` and ``D`` returns its ``x0`` estimate, which is the same
    in both coordinates.

    Args:
        sde: any of our SDEs (VE: ``alpha_t = 1``, so ``x_ve = x_t``).
        model: ``(x_t, t) -> eps`` for ``prediction="eps"`` (``D`` applies Tweedie's formula
            ``(x_t - sigma_t eps) / alpha_t``), ``(x_t, t) -> x0`` for ``prediction="x0"``.
        prediction: ``"eps"`` or ``"x0"``.

    Returns:
        ``D(x_ve, sigma)``. Shapes: ``x_ve: (B, *D)``, ``sigma: (B,)`` -> ``(B, *D)``.
    """
    if prediction not in ("eps", "x0"):
        raise ValueError(f"prediction must be 'eps' or 'x0', got {prediction!r}")
    tweedie = prediction == "eps"

    def denoise(x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = sde.t_from_log_snr(-torch.log(sigma.to(torch.float64)))
        alpha_t, sigma_t = (append_dims(c.to(x_ve.dtype), x_ve.ndim)
                            for c in sde.marginal_coeffs(t))
        x_t = alpha_t * x_ve
        out = model(x_t, t.to(x_ve.dtype))
        return (x_t - sigma_t * out) / alpha_t if tweedie else out

    return denoise


# --------------------------------------------------------------------------------------------
# device and timing


def resolve_device(name: str) -> torch.device:
    """A benchmark's ``--device``: ``auto`` picks CUDA when present.

    :func:`sde_gen.app.distributed.resolve_device`; a name it rejects (unknown, or a device this
    machine lacks) ends the script with its one-line message instead of a traceback.
    """
    try:
        return _resolve_device(name)
    except ValueError as exc:
        raise SystemExit(f"--device {name}: {exc}") from None


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], R], device: torch.device = CPU) -> tuple[R, float]:
    """``(fn(), wall seconds)``, with ``device`` synchronized before and after the call."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# image networks of one size


def build_unet(preset: str, resolution: int) -> UNet:
    """Our ``UNet`` of ``UNET_PRESETS[preset]`` at ``resolution`` (:func:`peer_unet`'s size)."""
    cfg = dict(UNET_PRESETS[preset])
    cfg["resolution"] = resolution
    return UNet(**cfg)


def peer_unet(df, preset: str, resolution: int):
    """diffusers ``UNet2DModel`` of the size of our ``preset`` (DDPM CIFAR-10 layout)."""
    cfg = UNET_PRESETS[preset]
    ch, mult = cfg["ch"], cfg["ch_mult"]
    levels = [resolution // 2**i in cfg["attn_resolutions"] for i in range(len(mult))]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
    groups = min(32, ch // 4)
    return df.UNet2DModel(
        sample_size=resolution, in_channels=cfg.get("in_channels", 3),
        out_channels=cfg.get("in_channels", 3), block_out_channels=tuple(ch * m for m in mult),
        layers_per_block=cfg["num_res_blocks"], down_block_types=down, up_block_types=up,
        dropout=cfg["dropout"], attention_head_dim=None, norm_num_groups=groups, norm_eps=1e-6,
    )


def ddpm_scheduler(*, clip_sample: bool = True):
    """The example's ``DDPMScheduler`` (1000 linear-beta steps, epsilon prediction)."""
    df = _require_diffusers()
    return df.DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE,
                            prediction_type="epsilon", clip_sample=clip_sample)


# --------------------------------------------------------------------------------------------
# toy 2-D network


class _PeerBlock(nn.Module):
    """LayerNorm -> SiLU -> Linear (+ projected time embedding) -> SiLU -> Linear, residual."""

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb_proj = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.fc1(F.silu(self.norm(h))) + self.emb_proj(emb)
        return h + self.fc2(F.silu(r))


class PeerMLP(nn.Module):
    """Residual MLP eps-network for low-dimensional data, on diffusers' timestep embedding.

    ``net(x, timesteps)`` with integer ``timesteps`` in ``0..999`` (a ``(B,)`` tensor, or a
    0-d one broadcast over the batch): sinusoidal features of the integer timestep
    (``diffusers.models.embeddings.Timesteps``, as ``UNet2DModel`` uses them), a 2-layer MLP
    (``TimestepEmbedding``: Linear, SiLU, Linear), an input Linear, ``depth`` residual blocks
    LayerNorm -> SiLU -> Linear (+ Linear projection of the time embedding) -> SiLU -> Linear,
    and LayerNorm -> SiLU -> Linear out. It has the layout, hence the parameter count, of our
    ``sde_gen.nets.mlp.MLP``: ``2 (e^2 + e) + (D w + w) + depth (4 w + 2 (w^2 + w) + e w + w)
    + (2 w + w D + D)`` for width ``w``, embedding ``e``, data dimension ``D``
    (530,178 for ``D=2, w=256, depth=3, e=128``).

    Shapes: ``x (B, D)``, ``timesteps (B,)`` -> ``(B, D)``.
    """

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3, emb_dim: int = 128) -> None:
        super().__init__()
        if min(dim, width, depth, emb_dim) < 1:
            raise ValueError("PeerMLP sizes must be positive")
        emb = _require_diffusers().models.embeddings
        self.dim = dim
        self.time_proj = emb.Timesteps(emb_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = emb.TimestepEmbedding(emb_dim, emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_PeerBlock(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    @staticmethod
    def n_params_formula(dim: int = 2, width: int = 256, depth: int = 3, emb_dim: int = 128) -> int:
        """Parameter count from the layout (see the class docstring)."""
        w, e, d = width, emb_dim, dim
        block = 2 * w + 2 * (w * w + w) + (e * w + w)
        return 2 * (e * e + e) + (d * w + w) + depth * block + (2 * w + w * d + d)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"PeerMLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(self.time_proj(timesteps).to(x.dtype))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


# --------------------------------------------------------------------------------------------
# the training loop of train_unconditional.py


def _fit(forward: Callable, model: nn.Module, next_batch: Callable[[], torch.Tensor],
         noise_scheduler, *, seconds: float | None, steps: int | None, lr: float | None,
         seed: int, device: torch.device) -> dict:
    """Train ``model`` (``forward(x_t, timesteps) -> eps``) on ``next_batch()`` clean batches."""
    if seconds is None and steps is None:
        raise ValueError("give steps, seconds or both")
    if steps is not None and steps < 1:
        raise ValueError("steps must be >= 1")
    if seconds is not None and seconds <= 0:
        raise ValueError("seconds must be > 0")
    df = _require_diffusers()
    get_scheduler = df.optimization.get_scheduler
    lr = LEARNING_RATE if lr is None else lr
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAM_BETAS,
                                  weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)
    ema = df.training_utils.EMAModel(model.parameters(), decay=EMA_MAX_DECAY, use_ema_warmup=True,
                                     inv_gamma=EMA_INV_GAMMA, power=EMA_POWER)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    n_train = noise_scheduler.config.num_train_timesteps

    calibrate = steps is None
    # Seconds only: a provisional schedule for the calibration steps; within the warmup its lr
    # (lr * step / warmup) is the same as that of the final schedule, whatever its length.
    total = 10**9 if calibrate else steps
    lr_scheduler = get_scheduler(LR_SCHEDULER, optimizer=optimizer,
                                 num_warmup_steps=LR_WARMUP_STEPS, num_training_steps=total)

    def step() -> float:
        clean = next_batch()
        noise = torch.randn(clean.shape, generator=gen, device=device, dtype=clean.dtype)
        timesteps = torch.randint(0, n_train, (clean.shape[0],), generator=gen,
                                  device=device).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(forward(noisy, timesteps).float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.step(model.parameters())
        return loss.detach().item()

    losses: list[float] = []
    t0 = time.perf_counter()
    t_skip = t0

    def out_of_time() -> bool:
        return seconds is not None and time.perf_counter() - t0 >= seconds

    while len(losses) < total and not out_of_time():
        losses.append(step())
        if calibrate and len(losses) == CALIBRATION_SKIP:
            t_skip = time.perf_counter()
        if calibrate and len(losses) == CALIBRATION_STEPS:
            now = time.perf_counter()
            rate = (CALIBRATION_STEPS - CALIBRATION_SKIP) / max(now - t_skip, 1e-9)
            total = CALIBRATION_STEPS + max(0, int(rate * (seconds - (now - t0))))
            lr_scheduler = get_scheduler(LR_SCHEDULER, optimizer=optimizer,
                                         num_warmup_steps=LR_WARMUP_STEPS,
                                         num_training_steps=total)
            with warnings.catch_warnings():  # fast-forward past the steps already taken
                warnings.simplefilter("ignore")
                for _ in range(CALIBRATION_STEPS):
                    lr_scheduler.step()
            calibrate = False
    wall = time.perf_counter() - t0
    if calibrate:  # the budget ran out inside the calibration
        total = len(losses)

    net = copy.deepcopy(model)
    ema.copy_to(net.parameters())
    net.eval().requires_grad_(False)
    tail = losses[-min(len(losses), 50):]
    return {
        "model": net,
        "scheduler": noise_scheduler,
        "steps": len(losses),
        "schedule_steps": total,
        "seconds": wall,
        "loss": sum(tail) / len(tail),  # mean over the last (up to) 50 steps
        "last_loss": losses[-1],
        "lr_last": lr_scheduler.get_last_lr()[0],
        "ema_decay": ema.cur_decay_value,
        "params": sum(p.numel() for p in model.parameters()),
    }


def train_toy_peer(sample_data: Callable[[int, torch.Generator], torch.Tensor], *, width: int,
                   depth: int, batch_size: int = 512, seconds: float | None = None,
                   steps: int | None = None, lr: float | None = None, seed: int = 0,
                   device: str | torch.device = "cpu", emb_dim: int = 128) -> dict:
    """Train a :class:`PeerMLP` eps-network on fresh 2-D batches with the example's loop.

    ``sample_data(n, generator) -> (n, D)`` draws the data (a CPU ``torch.Generator`` seeded
    with ``seed`` is passed). Stops at ``steps`` or after ``seconds`` (see the module docstring
    for how a seconds-only run sizes its cosine schedule). ``lr`` defaults to the example's 1e-4.

    Returns a dict: ``model`` (the EMA network, a copy in eval mode), ``scheduler`` (the
    ``DDPMScheduler``, ``clip_sample=False``), ``steps`` (done), ``schedule_steps`` (length of
    the cosine schedule), ``seconds`` (wall), ``loss`` (mean of the last 50 step losses),
    ``last_loss``, ``lr_last``, ``ema_decay``, ``params``.
    """
    device = torch.device(device)
    data_gen = torch.Generator().manual_seed(seed)
    probe = sample_data(2, data_gen)
    torch.manual_seed(seed)
    model = PeerMLP(probe.shape[1], width=width, depth=depth, emb_dim=emb_dim)

    def next_batch() -> torch.Tensor:
        return sample_data(batch_size, data_gen).to(device=device, dtype=torch.float32)

    return _fit(model, model, next_batch, ddpm_scheduler(clip_sample=False), seconds=seconds,
                steps=steps, lr=lr, seed=seed, device=device)


@torch.no_grad()
def _ddpm_sample(forward: Callable, scheduler, shape: tuple[int, ...], *, steps: int, seed: int,
                 device: torch.device) -> torch.Tensor:
    """The denoising loop of ``DDPMPipeline`` on a fresh copy of ``scheduler``."""
    sched = type(scheduler).from_config(scheduler.config)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=gen, device=device)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        eps = forward(x, t.to(device))
        x = sched.step(eps, t, x, generator=gen).prev_sample
    return x


def sample_toy_peer(peer: dict, n: int, *, seed: int = 0, steps: int = 1000,
                    device: str | torch.device = "cpu", clip_sample: bool | None = None
                    ) -> torch.Tensor:
    """``(n, D)`` float32 samples (on the CPU) of a :func:`train_toy_peer` result.

    Ancestral DDPM sampling as ``DDPMPipeline`` does it, with ``steps`` inference steps
    (``set_timesteps(steps)``; 1000 is the full chain). ``clip_sample`` overrides the
    scheduler's setting (the toy peer trains with ``False``).
    """
    device = torch.device(device)
    net = peer["model"].to(device)
    sched = peer["scheduler"]
    if clip_sample is not None:
        sched = type(sched).from_config(sched.config, clip_sample=clip_sample)
    x = _ddpm_sample(net, sched, (n, net.dim), steps=steps, seed=seed, device=device)
    return x.float().cpu()


# --------------------------------------------------------------------------------------------
# image peer


def train_image_peer(images: torch.Tensor, *, model: str | dict | nn.Module = "tiny",
                     batch_size: int = 16, seconds: float | None = None,
                     steps: int | None = None, lr: float | None = None, seed: int = 0,
                     device: str | torch.device = "cpu", random_flip: bool = False) -> dict:
    """Train a diffusers ``UNet2DModel`` on ``images`` (uint8 ``(N, C, H, W)``) with the example's
    loop.

    ``model``: a key of our ``UNET_PRESETS`` (a :func:`peer_unet` of that size at the images'
    resolution), a dict of ``UNet2DModel`` keyword arguments, or a ``UNet2DModel``. Pixels map
    to ``[-1, 1]`` as the example's ``ToTensor() + Normalize([0.5], [0.5])`` does; batches are
    drawn as a shuffled ``DataLoader`` would (each epoch a permutation, last batch partial);
    ``random_flip`` (off by default, as the example's ``--random_flip``) flips each image
    horizontally with probability 1/2. The ``DDPMScheduler`` keeps ``clip_sample=True``.
    Stopping, schedule and the returned dict are those of :func:`train_toy_peer`.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"need uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    df = _require_diffusers()
    device = torch.device(device)
    torch.manual_seed(seed)
    if isinstance(model, str):
        unet = peer_unet(df, model, images.shape[-1])
    elif isinstance(model, dict):
        unet = df.UNet2DModel(**model)
    else:
        unet = model
    if unet.config.in_channels != images.shape[1]:
        raise ValueError(f"UNet2DModel has {unet.config.in_channels} input channels, the images "
                         f"{images.shape[1]}")
    data = images.to(device)
    data_gen = torch.Generator().manual_seed(seed)
    order: list[torch.Tensor] = []

    def next_batch() -> torch.Tensor:
        if not order:
            order.extend(torch.randperm(len(data), generator=data_gen).split(batch_size))
        idx = order.pop(0).to(device)
        x = data[idx].float() / 127.5 - 1
        if random_flip:
            flip = (torch.rand(len(idx), generator=data_gen) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def forward(x, t):
        return unet(x, t).sample

    return _fit(forward, unet, next_batch, ddpm_scheduler(clip_sample=True), seconds=seconds,
                steps=steps, lr=lr, seed=seed, device=device)


def sample_image_peer(peer: dict, n: int, *, seed: int = 0, steps: int = 1000,
                      batch_size: int | None = None, device: str | torch.device = "cpu"
                      ) -> torch.Tensor:
    """``(n, C, H, W)`` float32 samples in ``[-1, 1]`` (on the CPU) of a :func:`train_image_peer`
    result.

    ``DDPMPipeline``'s loop (``steps`` inference steps) in batches of ``batch_size`` (all at
    once by default; batch ``k`` uses seed ``seed + k``), clamped to ``[-1, 1]`` as the pipeline
    clamps its ``[0, 1]`` output.
    """
    device = torch.device(device)
    unet = peer["model"].to(device)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
    batch_size = batch_size or n
    out = []
    for k, start in enumerate(range(0, n, batch_size)):
        b = min(batch_size, n - start)
        x = _ddpm_sample(lambda x, t: unet(x, t).sample, peer["scheduler"],
                         (b, cfg.in_channels, *size), steps=steps, seed=seed + k, device=device)
        out.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# self-check


FAR = 4.0  # |x| beyond which the 8 Gaussians (radius sqrt(2), std 0.1) have no mass


def smoke(seconds: float, n: int, device: str, seed: int, width: int, depth: int) -> None:
    from sde_gen.data.toy2d import Toy2D
    from sde_gen.metrics import energy_distance, sliced_wasserstein

    d = Toy2D("8gaussians")
    peer = train_toy_peer(lambda m, g: d.sample(m, generator=g), width=width, depth=depth,
                          seconds=seconds, seed=seed, device=device)
    print(f"PeerMLP(2, width={width}, depth={depth}, emb_dim=128): {peer['params']:,} parameters")
    print(f"trained {peer['steps']} steps (cosine schedule {peer['schedule_steps']} steps, "
          f"warmup {LR_WARMUP_STEPS}) in {peer['seconds']:.1f} s; loss (last 50) "
          f"{peer['loss']:.4f}, final lr {peer['lr_last']:.2e}, EMA decay {peer['ema_decay']:.5f}")
    t0 = time.perf_counter()
    x = sample_toy_peer(peer, n, seed=seed + 100, device=device)
    print(f"sampled {n} points, 1000 DDPM steps, in {time.perf_counter() - t0:.1f} s")

    g = torch.Generator().manual_seed(seed + 200)
    ref, ref2 = d.sample(n, generator=g), d.sample(n, generator=g)

    def report(label: str, s: torch.Tensor) -> None:
        pg = torch.Generator().manual_seed(seed + 300)
        ok = torch.isfinite(s).all(dim=1)
        lp = d.log_prob(s[ok].double()).mean().item()
        ed = energy_distance(s[ok], ref[: int(ok.sum())]).item()
        sw = sliced_wasserstein(s[ok], ref[: int(ok.sum())], generator=pg).item()
        far = int((s.norm(dim=1) > FAR).sum())  # the data has no mass there
        print(f"{label:38s} E[log q] {lp:9.3f}  energy {ed:.4f}  SW2 {sw:.4f}  |x|>{FAR:g}: {far}"
              + ("" if ok.all() else f"  ({int((~ok).sum())} non-finite dropped)"))

    report("peer samples: E_p[log q]", x)
    near = x[x.norm(dim=1) <= FAR]
    if len(near) < len(x):
        report(f"  the same without |x|>{FAR:g}", near)
    report("fresh data: E_q[log q], noise floor", ref2)
    xc = sample_toy_peer(peer, n, seed=seed + 100, device=device, clip_sample=True)
    report("peer, example default clip_sample=True", xc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="train/sample the toy peer on 8gaussians")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--n", type=int, default=2000, help="samples and reference points")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.smoke:
        ap.print_help()
        return
    torch.set_num_threads(args.threads)
    if import_diffusers() is None:
        sys.exit(1)
    smoke(args.seconds, args.n, args.device, args.seed, args.width, args.depth)


if __name__ == "__main__":
    main()
