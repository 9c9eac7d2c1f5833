"""Typed, frozen run configuration loaded from YAML, with strict validation.

Sections map to frozen dataclasses. A YAML file or ``--set section.key=value`` override that names
an unknown key, gives a value of the wrong type or outside its allowed range (NaN and infinities
included) raises :class:`ConfigError` with a one-line message naming the key and what is allowed;
so does a YAML mapping that repeats a key (:class:`StrictLoader`).

The allowed names of ``sde.name``, ``model.name`` and ``data.name`` are the keys of the registries
the factory builds from: :data:`sde_gen.sde.SDES`, :data:`sde_gen.nets.NETWORKS` and
:data:`sde_gen.data.registry.DATASETS` (which lists the image sets without loading them).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..data.registry import DATASETS, TOY
from ..data.toy2d import TOY2D_CLASSES
from ..errors import ConfigError
from ..latent.autoencoder import AUTOENCODER_FACTORS
from ..nets import NETWORKS
from ..sde import SDES, vp_min_chain_steps

__all__ = ["RESUMABLE_KEYS", "Config", "ConfigError", "DataConfig", "ModelConfig", "SDEConfig",
           "TrainConfig", "from_dict", "load_config", "parse_override", "save_config", "to_dict"]


def _f(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with a help text and validation rules (``min``, ``max``, ``gt``, ``lt``,
    ``choices``, ``even``). A float field always has to be finite."""
    return field(default=default, metadata={"help": help, **rules})


#: ``model.name`` of a first-stage autoencoder run (not a score network).
AUTOENCODER = "autoencoder"


@dataclass(frozen=True)
class SDEConfig:
    name: str = _f("vp", "forward SDE", choices=tuple(SDES))
    beta_min: float = _f(0.1, "VP/sub-VP beta(0)", min=1e-6)
    beta_max: float = _f(20.0, "VP/sub-VP beta(1)", min=1e-6)
    schedule: str = _f("linear", "VP beta schedule", choices=("linear", "cosine"))
    sigma_min: float = _f(0.01, "VE smallest noise std", min=1e-6)
    sigma_max: float = _f(50.0, "VE largest noise std", min=1e-6)
    N: int = _f(1000, "number of discrete steps (DDPM's T)", min=2, max=100_000)
    shift: float = _f(1.0, "flow/trig: time shift of the default sampling grids (SD3's; 1: "
                      "uniform in t)", min=1e-3, max=1e3)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("mlp", "network (autoencoder: train the first stage of latent diffusion, "
                   "diffusers' AutoencoderKL)", choices=(*NETWORKS, AUTOENCODER))
    width: int = _f(128, "MLP hidden width", min=1, max=65536)
    depth: int = _f(3, "MLP residual blocks", min=1, max=64)
    emb_dim: int = _f(64, "MLP time-embedding size (even)", min=2, max=4096, even=True)
    ch: int = _f(128, "U-Net base channels", min=1, max=4096)
    ch_mult: tuple = _f((1, 2, 2, 2), "U-Net channel multipliers per level")
    num_res_blocks: int = _f(2, "U-Net residual blocks per level", min=1, max=16)
    attn_resolutions: tuple = _f((16,), "U-Net feature sizes with self-attention")
    dropout: float = _f(0.1, "U-Net dropout", min=0.0, max=0.9)
    num_heads: int = _f(1, "U-Net attention heads", min=1, max=64)
    prediction: str = _f("edm", "what the network predicts (edm: EDM's preconditioned F; "
                         "velocity: flow matching's alpha' x0 + sigma' eps)",
                         choices=("eps", "x0", "v", "velocity", "edm"))
    sigma_data: float = _f(1.0, "data std for input scaling and EDM's c_skip/c_out", min=1e-6)
    noise_cond: str = _f("auto", "network conditioned on the time t or the log-SNR (auto: t on "
                         "a path with alpha_T = 0, flow and trig, where the log-SNR is -inf at "
                         "T; logsnr elsewhere)", choices=("auto", "t", "logsnr"))
    film: bool = _f(True, "MLP: FiLM (scale and shift) conditioning instead of additive")
    fourier_features: int = _f(32, "MLP: random Fourier features of the input (0: off)", min=0,
                               max=4096)
    fourier_scale: float = _f(0.5, "MLP: std of the Fourier frequencies", gt=0.0)
    learn_variance: bool = _f(False, "learn the reverse variance: the net also outputs v, "
                              "Sigma = exp(v log beta + (1 - v) log beta~) ([Nichol21] Eq. 15); "
                              "trains the hybrid loss")
    class_cond: bool = _f(False, "class-conditional model (labels: the 2-D mixtures' components, "
                          "the pinwheel's arms, image classes); label dropout trains the null "
                          "label for classifier-free guidance")
    factor: int = _f(4, "autoencoder: downsampling factor f (model.ch_mult has log2 f + 1 "
                     "levels)", choices=AUTOENCODER_FACTORS)
    latent_channels: int = _f(4, "autoencoder: latent channels c", min=1, max=1024)
    autoencoder: str = _f("", "latent diffusion: the frozen autoencoder, a finished "
                          "model.name=autoencoder run directory or a diffusers AutoencoderKL "
                          "folder ('': diffuse pixels)")
    latent_scaling: str = _f("auto", "latent diffusion: scaling_factor/shift_factor from the "
                             "folder's config (auto, for a diffusers folder) or from the "
                             "training latents (data; auto for a run)", choices=("auto", "data"))


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("8gaussians", "dataset", choices=tuple(DATASETS))
    path: str = _f("", "local .npz file or image folder (npz, folder, or instead of torchvision)")
    root: str = _f("", "torchvision root (default ~/.cache/sde_gen)")
    download: bool = _f(False, "let torchvision download the dataset (needs internet)")
    flip: bool = _f(False, "random horizontal flips (images)")
    channels: int = _f(3, "channels of a folder dataset (1 or 3)", choices=(1, 3))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(4000, "optimizer steps", min=1, max=10**9)
    batch_size: int = _f(1024, "examples per step", min=1, max=10**6)
    lr: float = _f(5e-3, "AdamW peak learning rate", min=0.0, max=1.0)
    warmup: int = _f(200, "linear LR warmup steps", min=0, max=10**9)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0.0, max=1.0)
    grad_clip: float = _f(1.0, "gradient-norm clip (0 disables)", min=0.0)
    ema_decay: float = _f(0.999, "EMA decay of the weights", min=0.0, max=1.0)
    seed: int = _f(0, "random seed", min=0, max=2**63 - 1)
    weighting: str = _f("edm", "DSM weighting (velocity: flow matching's ||v_theta - v||^2)",
                        choices=("simple", "likelihood", "min_snr", "edm", "velocity"))
    min_snr_gamma: float = _f(5.0, "gamma of the min-SNR weighting", gt=0.0)
    time_sampling: str = _f("lognormal", "training-time distribution",
                            choices=("uniform", "importance", "lognormal", "logit_normal"))
    p_mean: float = _f(-1.0, "lognormal time sampling: mean of ln(sigma/alpha)")
    p_std: float = _f(1.6, "lognormal time sampling: std of ln(sigma/alpha)", gt=0.0)
    logit_mean: float = _f(0.0, "logit_normal time sampling: mean m of logit(t/T) ([Esser24] "
                           "Sec. 3.1)")
    logit_std: float = _f(1.0, "logit_normal time sampling: std s of logit(t/T)", gt=0.0)
    time_shift: float = _f(1.0, "uniform/logit_normal time sampling: SD3's shift t/T -> s t/(1 "
                           "+ (s - 1) t) ([Esser24] Sec. 5.3.2; 1: none)", min=1e-3, max=1e3)
    lr_schedule: str = _f("cosine", "LR after warmup", choices=("constant", "cosine"))
    ema_mode: str = _f("warmup", "EMA decay rule", choices=("fixed", "warmup", "power"))
    ema_sigma_rel: float = _f(0.1, "power EMA: relative width sigma_rel", gt=0.0, max=0.27)
    t_eps: float = _f(1e-5, "smallest training time", min=0.0, max=0.5)
    reduce: str = _f("mean", "reduce the squared error over dims", choices=("mean", "sum"))
    discrete: bool = _f(False, "train on DDPM's N discrete steps")
    vlb_weight: float = _f(0.001, "hybrid loss L_simple + lambda L_vlb: lambda "
                           "(model.learn_variance; [Nichol21] Eq. 16)", min=0.0)
    vlb_importance: bool = _f(False, "hybrid loss: draw steps with p_t ~ sqrt(E[L_t^2]) from the "
                              "last 10 values of each term ([Nichol21] Eq. 18)")
    ckpt_every: int = _f(1000, "checkpoint every K steps", min=1, max=10**9)
    keep: int = _f(3, "checkpoints kept", min=1, max=1000)
    log_every: int = _f(100, "metrics every K steps", min=1, max=10**9)
    device: str = _f("auto", "auto, cpu, cuda, cuda:N or mps (checked when training starts)")
    threads: int = _f(0, "CPU intra-op threads (0: 1 for 2-D data, torch's default for images)",
                      min=0, max=1024)
    plot_samples: int = _f(2000, "samples in the final plot (0: no plot)", min=0, max=10**6)
    precision: str = _f("auto", "auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16",
                        choices=("auto", "fp32", "bf16"))
    channels_last: bool = _f(True, "channels_last memory format for images on CUDA")
    compile: bool = _f(False, "torch.compile the network for training")
    sample_every: int = _f(0, "write an EMA sample grid every K steps (0: never)", min=0)
    sample_n: int = _f(64, "images in a sample grid", min=1, max=4096)
    max_nonfinite: int = _f(10, "stop after this many consecutive NaN/Inf steps", min=1)
    max_seconds: float = _f(0.0, "wall-clock budget: checkpoint and stop after it (0: none)",
                            min=0.0)
    kl_weight: float = _f(1e-6, "autoencoder: weight of KL(q(z|x) || N(0, I)) against the "
                          "decoder's NLL ([Rombach22] App. G)", min=0.0)
    label_dropout: float = _f(0.1, "model.class_cond: probability that a label is replaced by "
                              "the null label ([Ho22] Alg. 1's p_uncond)", min=0.0, lt=1.0)
    calibrate_nfe: tuple = _f((5, 10, 20), "after training, calibrate the fast solver's grid at "
                              "these NFEs (sde-gen calibrate; []: none)")
    calibrate_budget: float = _f(20.0, "seconds for that calibration, all NFEs together (0: off)",
                                 min=0.0)


#: The keys that only an autoencoder run reads, and those only a latent score model reads.
AUTOENCODER_KEYS = ("model.factor", "model.latent_channels", "train.kl_weight")
LATENT_KEYS = ("model.latent_scaling",)

#: The SDEs whose path has ``alpha_T = 0`` (pure noise at ``T``): no log-SNR at ``T``, no
#: discrete chain (:attr:`~sde_gen.sde.SDE.pure_noise_at_T`, asked of a default instance).
PURE_NOISE_PATHS = tuple(name for name, cls in SDES.items() if cls().pure_noise_at_T)


def resolve_noise_cond(noise_cond: str, sde_name: str) -> str:
    """``model.noise_cond=auto``: ``t`` on a pure-noise path (the log-SNR is ``-inf`` at ``T``),
    ``logsnr`` elsewhere (the recipe of benchmarks/results/training_quality.md)."""
    if noise_cond != "auto":
        return noise_cond
    return "t" if sde_name in PURE_NOISE_PATHS else "logsnr"


@dataclass(frozen=True)
class Config:
    """A run's configuration; ``model.noise_cond=auto`` is resolved here
    (:func:`resolve_noise_cond`), so a saved config records what the network is conditioned on."""

    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        cond = resolve_noise_cond(self.model.noise_cond, self.sde.name)
        if cond != self.model.noise_cond:
            object.__setattr__(self, "model", dataclasses.replace(self.model, noise_cond=cond))


#: The keys that may differ from a run's saved config when training resumes in its workdir: how
#: long to train, how often to log, checkpoint and sample, where and with how many threads, and
#: when to give up. Every other key (the SDE, model, data, objective, optimizer, seed, precision)
#: fixes what the checkpoint's weights mean and must stay equal (checked on resume).
RESUMABLE_KEYS = (
    "train.steps", "train.log_every", "train.ckpt_every", "train.keep", "train.sample_every",
    "train.sample_n", "train.plot_samples", "train.device", "train.threads",
    "train.max_nonfinite", "train.max_seconds", "data.download", "train.calibrate_nfe",
    "train.calibrate_budget",
    # The autoencoder's path may move: resuming checks its weights' hash instead.
    "model.autoencoder",
)

_SECTION_CLASSES = {
    "sde": SDEConfig, "model": ModelConfig, "data": DataConfig, "train": TrainConfig,
}


def _coerce(key: str, value: Any, f: dataclasses.Field) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):  # also NaN and inf
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        value = int(value)
    elif kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # NaN passes every comparison below
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif kind == "str" and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    elif kind == "tuple":
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ConfigError(f"{key}: expected a list of positive integers, got {value!r}")
        value = tuple(value)
    rules = f.metadata
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, rules['choices']))}")
    if "gt" in rules and not value > rules["gt"]:
        raise ConfigError(f"{key}: {value!r} must be greater than {rules['gt']}")
    if "lt" in rules and not value < rules["lt"]:
        raise ConfigError(f"{key}: {value!r} must be below {rules['lt']}")
    if "min" in rules and value < rules["min"]:
        raise ConfigError(f"{key}: {value!r} is below the minimum {rules['min']}")
    if "max" in rules and value > rules["max"]:
        raise ConfigError(f"{key}: {value!r} is above the maximum {rules['max']}")
    if rules.get("even") and value % 2:
        raise ConfigError(f"{key}: {value!r} must be even")
    return value


def _build_section(name: str, values: Mapping[str, Any]) -> Any:
    cls = _SECTION_CLASSES[name]
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key '{name}.{key}'; allowed: {', '.join(known)}")
        kwargs[key] = _coerce(f"{name}.{key}", value, known[key])
    return cls(**kwargs)


def from_dict(d: Mapping[str, Any]) -> Config:
    """Build a validated :class:`Config` from nested dicts (missing keys take defaults)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if section not in _SECTION_CLASSES:
            raise ConfigError(
                f"unknown section '{section}'; allowed: {', '.join(_SECTION_CLASSES)}"
            )
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"section '{section}' must be a mapping, got {values!r}")
    cfg = Config(**{s: _build_section(s, d.get(s) or {}) for s in _SECTION_CLASSES})
    _check_combination(cfg)
    return cfg


#: The ``sde.name`` values whose SDE reads each ``sde.*`` key (``N``: all of them); a key set away
#: from its default for another SDE is an error, not silently ignored (and recorded as used).
SDE_KEYS_USED_BY = {"beta_min": ("vp", "subvp"), "beta_max": ("vp", "subvp"), "schedule": ("vp",),
                    "sigma_min": ("ve",), "sigma_max": ("ve",), "shift": ("flow", "trig")}


def _check_sde(sde: SDEConfig) -> None:
    """Every non-default ``sde.*`` key is used by ``sde.name``, and VP's DDPM chain is valid."""
    defaults = SDEConfig()
    for key, names in SDE_KEYS_USED_BY.items():
        value = getattr(sde, key)
        if sde.name not in names and value != getattr(defaults, key):
            raise ConfigError(f"sde.{key}={value} applies only to sde.name={' or '.join(names)} "
                              f"(it is {sde.name})")
    if sde.name == "vp" and sde.schedule == "cosine":
        for key in ("beta_min", "beta_max"):
            if getattr(sde, key) != getattr(defaults, key):
                raise ConfigError(f"sde.{key}={getattr(sde, key)} is unused by sde.schedule=cosine "
                                  f"(it applies only to schedule=linear)")
    if sde.name == "vp":
        n_min = vp_min_chain_steps(sde.beta_max, sde.schedule)
        if sde.N < n_min:  # [Ho20] Sec. 4: beta_i = linspace(beta_min/N, beta_max/N, N)
            raise ConfigError(f"sde.N={sde.N}: VP's linear DDPM chain has beta_i up to "
                              f"{sde.beta_max / sde.N:.3g} >= 1 (sde.beta_max/sde.N); "
                              f"use sde.N >= {n_min} (or sde.schedule=cosine)")


def _check_combination(cfg: Config) -> None:
    """Rules that involve more than one key."""
    for low, high in (("beta_min", "beta_max"), ("sigma_min", "sigma_max")):
        if not getattr(cfg.sde, low) < getattr(cfg.sde, high):
            raise ConfigError(f"sde.{low}={getattr(cfg.sde, low)} must be below "
                              f"sde.{high}={getattr(cfg.sde, high)}")
    _check_sde(cfg.sde)
    _check_pure_noise_path(cfg)
    _check_time_sampling(cfg.train)
    if cfg.train.discrete and cfg.train.time_sampling != "uniform":
        raise ConfigError(f"train.discrete=true draws DDPM's steps uniformly; also set "
                          f"train.time_sampling=uniform (it is {cfg.train.time_sampling})")
    if cfg.model.learn_variance:
        if cfg.sde.name == "ve":
            raise ConfigError("model.learn_variance=true needs a DDPM chain (sde.name=vp or "
                              "subvp); VE has no beta_t to interpolate")
        if not cfg.train.discrete:
            raise ConfigError("model.learn_variance=true trains the hybrid loss on DDPM's "
                              "discrete steps; set train.discrete=true")
        if cfg.train.weighting != "simple":
            raise ConfigError(f"model.learn_variance=true trains L_simple + lambda L_vlb; set "
                              f"train.weighting=simple (it is {cfg.train.weighting})")
    elif cfg.train.vlb_importance:
        raise ConfigError("train.vlb_importance=true samples the steps of the hybrid loss; it "
                          "needs model.learn_variance=true")
    _check_class_cond(cfg)
    _check_latent(cfg)


def _non_default(cfg: Config, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` (``section.key``) set away from its default, or ``None``."""
    default = Config()
    for key in keys:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) != getattr(getattr(default, section), name):
            return key
    return None


def _check_latent(cfg: Config) -> None:
    """An autoencoder run: images, no SDE or score-model options, ``model.ch_mult`` with one
    level per halving. A latent score model: a U-Net on images, no flips."""
    m = cfg.model
    if m.name == AUTOENCODER:
        if DATASETS[cfg.data.name] == TOY:
            raise ConfigError(f"model.name=autoencoder encodes images; data.name={cfg.data.name} "
                              "is 2-D data")
        levels = int(math.log2(m.factor)) + 1
        if len(m.ch_mult) != levels:
            raise ConfigError(f"model.ch_mult={list(m.ch_mult)} has {len(m.ch_mult)} levels; an "
                              f"autoencoder with model.factor={m.factor} needs {levels} (f = "
                              "2^(levels - 1))")
        for key, bad in (("model.autoencoder", m.autoencoder), ("model.class_cond", m.class_cond),
                         ("model.learn_variance", m.learn_variance),
                         ("sde.name", cfg.sde.name != SDEConfig().name)):
            if bad:
                raise ConfigError(f"{key} does not apply to model.name=autoencoder (the first "
                                  "stage has no score model or SDE)")
        return
    key = _non_default(cfg, AUTOENCODER_KEYS)
    if key is not None:
        raise ConfigError(f"{key} applies only to model.name=autoencoder (it is {m.name})")
    if not m.autoencoder:
        key = _non_default(cfg, LATENT_KEYS)
        if key is not None:
            raise ConfigError(f"{key} applies only to latent diffusion; set model.autoencoder")
        return
    if m.name != "unet" or DATASETS[cfg.data.name] == TOY:
        raise ConfigError(f"model.autoencoder: latent diffusion needs image data and "
                          f"model.name=unet (it is {m.name} on {cfg.data.name})")
    if cfg.data.flip:
        raise ConfigError("data.flip=true does not apply to latent diffusion: the training "
                          "images are encoded once, unflipped")


def _check_pure_noise_path(cfg: Config) -> None:
    """On a path with ``alpha_T = 0`` (flow, trig): no log-SNR input (``-inf`` at ``T``), a
    prediction that gives x0 at ``T``, none of the VP/DDPM-chain options, no importance times."""
    name = cfg.sde.name
    if name not in PURE_NOISE_PATHS:
        return
    where = f"sde.name={name} (alpha_T = 0)"
    if cfg.model.noise_cond == "logsnr":
        raise ConfigError(f"model.noise_cond=logsnr: the log-SNR is -inf at T on {where}; use "
                          "model.noise_cond=t (or auto)")
    if cfg.model.prediction == "eps":
        raise ConfigError(f"model.prediction=eps cannot give x0 at T on {where}, where sampling "
                          "starts; use velocity, edm, v or x0")
    if cfg.model.learn_variance:
        raise ConfigError(f"model.learn_variance=true (the hybrid loss, L_vlb) needs DDPM's "
                          f"chain (sde.name=vp or subvp); {where} has none")
    if cfg.train.discrete:
        raise ConfigError(f"train.discrete=true trains on DDPM's discrete chain; {where} has "
                          "none: use continuous time (train.discrete=false)")
    if cfg.train.time_sampling == "importance":
        raise ConfigError(f"train.time_sampling=importance draws t with density g^2/sigma^2, "
                          f"not integrable at T on {where}; use uniform, lognormal or "
                          "logit_normal")


def _check_time_sampling(tc: TrainConfig) -> None:
    """The logit-normal's keys only with ``logit_normal``; a shift only where it applies."""
    defaults = TrainConfig()
    for key in ("logit_mean", "logit_std"):
        if tc.time_sampling != "logit_normal" and getattr(tc, key) != getattr(defaults, key):
            raise ConfigError(f"train.{key}={getattr(tc, key)} applies only to "
                              f"train.time_sampling=logit_normal (it is {tc.time_sampling})")
    if tc.time_shift != 1.0 and tc.time_sampling not in ("uniform", "logit_normal"):
        raise ConfigError(f"train.time_shift={tc.time_shift} applies only to "
                          f"train.time_sampling=uniform or logit_normal (it is "
                          f"{tc.time_sampling})")


def _check_class_cond(cfg: Config) -> None:
    """``model.class_cond`` needs labelled data (2-D sets are known here; image sets are checked
    when built), and ``train.label_dropout`` applies only to a class-conditional model."""
    if cfg.model.class_cond:
        if DATASETS[cfg.data.name] == TOY and cfg.data.name not in TOY2D_CLASSES:
            raise ConfigError(f"model.class_cond=true needs labelled data; data.name="
                              f"{cfg.data.name} has no classes (labelled 2-D sets: "
                              f"{', '.join(TOY2D_CLASSES)}; or labelled images)")
    elif cfg.train.label_dropout != TrainConfig().label_dropout:
        raise ConfigError(f"train.label_dropout={cfg.train.label_dropout} applies only to a "
                          "class-conditional model; set model.class_cond=true")


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict of a config (YAML- and checkpoint-safe: tuples become lists)."""
    return {s: {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items()}
            for s, sec in dataclasses.asdict(cfg).items()}


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated within one mapping: PyYAML keeps the last
    value silently (``sde: {name: vp}`` then ``sde: {name: ve}`` would train VE), and the YAML
    spec requires keys to be unique."""


def _unique_keys_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:  # before merge keys (<<) are flattened: literal keys only
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {line} (first on line "
                    f"{first[key]})", key_node.start_mark)
            first[key] = line
        except TypeError:  # an unhashable key: SafeLoader's own error follows
            continue
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                             _unique_keys_mapping)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value`` (value read as YAML: ``3``, ``1e-4``, ``true``, ``vp``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    path, raw = text.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {path!r} must look like section.key")
    try:
        value = yaml.load(raw, Loader=StrictLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts[0], parts[1], value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **section_values: Mapping[str, Any],
) -> Config:
    """Defaults <- YAML file <- ``section_values`` (e.g. ``sde={"name": "ve"}``) <-
    ``overrides``."""
    d: dict[str, dict[str, Any]] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.load(p.read_text(), Loader=StrictLoader)  # safe, unique keys
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p} is not a text (UTF-8) YAML file") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{p} must hold a mapping of sections")
        for s, values in (loaded or {}).items():
            d[s] = dict(values) if isinstance(values, Mapping) else values
    for s, values in section_values.items():
        d.setdefault(s, {}).update(values)
    for text in overrides:
        s, k, v = parse_override(text)
        if s not in _SECTION_CLASSES:
            raise ConfigError(
                f"unknown section '{s}' in --set {text}; "
                f"allowed: {', '.join(_SECTION_CLASSES)}"
            )
        d.setdefault(s, {})[k] = v
    return from_dict(d)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, p)
