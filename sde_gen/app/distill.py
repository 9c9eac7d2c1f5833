"""``sde-gen distill``: a few-step model distilled from a trained run, as a run of its own.

The distilled run is a training run of the teacher's family: the same config (SDE, network,
data; ``train.*`` as overridden), the student initialized from the teacher's EMA weights
([Song23cm] Sec. 5), trained by :func:`~sde_gen.consistency.consistency_distillation_loss`
instead of the DSM loss. The loop, checkpoints, exact resume and SIGTERM handling are
:func:`~.train.train`'s (:class:`_Distiller` replaces only the objective); the checkpoint
carries a ``"consistency"`` entry (the method, the teacher checkpoint, ``N``, ``t_min``), by
which :func:`~.runs.load_run` returns the student as a
:class:`~sde_gen.consistency.ConsistencyModel`, sampled by ``sample --solver consistency``.

After the last step the student is compared with its teacher at each requested step count
``K`` on the same prior draws (``distill.json``): the energy distance of its samples to the
teacher's probability-flow endpoints (dopri5), beside the teacher's own DDIM with ``K`` calls.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..consistency import consistency_distillation_loss, distillation_grid
from ..errors import ConfigError, UserInputError
from . import distributed
from .checkpoint import CheckpointError, latest_readable_checkpoint
from .config import Config, from_dict, parse_override, to_dict
from .train import TrainResult, _Trainer, train

__all__ = ["DistillResult", "DistillSettings", "METHODS", "check_steps", "distill"]

METHODS = ("consistency",)
#: The most sampling steps ``--steps`` may name (and the most distillation intervals).
MAX_STEPS = 1000
#: ``train.*`` of a distillation unless ``--set`` says otherwise: a fine-tuning learning rate
#: (the student starts at the teacher), no warm-up, no mid-run DDIM grids (not the student's
#: sampler) and no final plot.
DISTILL_TRAIN = {"steps": 1000, "lr": 2e-4, "warmup": 0, "lr_schedule": "constant",
                 "sample_every": 0, "plot_samples": 0}


@dataclass(frozen=True)
class DistillSettings:
    """What a distillation is, fixed for its run (checked on resume; ``steps`` may change).

    Attributes:
        method: ``"consistency"`` (consistency distillation, :mod:`sde_gen.consistency`).
        teacher: the teacher's checkpoint file.
        intervals: ``N``, the distillation grid's intervals.
        t_min: the boundary time ``f(x, t_min) = x`` (the SDE's default end time).
        steps: the sampling step counts reported after distillation.
    """

    method: str
    teacher: str
    intervals: int
    t_min: float
    steps: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}


def check_steps(steps: Any) -> tuple[int, ...]:
    """``--steps``: one or more distinct integers in ``[1, MAX_STEPS]``, sorted.

    Raises:
        UserInputError: none, a non-integer, one out of range, or a repeated one.
    """
    steps = list(steps or ())
    if not steps:
        raise UserInputError("--steps needs at least one sampling step count, e.g. --steps 1 2 4")
    for k in steps:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_STEPS:
            raise UserInputError(f"--steps must be integers in [1, {MAX_STEPS}], got {k!r}")
    if len(set(steps)) != len(steps):
        raise UserInputError(f"--steps repeats a value: {' '.join(map(str, steps))}")
    return tuple(sorted(steps))


class _Student:
    """The student as the loss sees it: its x0 through the (possibly DDP- or compile-wrapped)
    forward, ``forward(x, t, with_x0=True)`` (``ScoreModel.predict``)."""

    predicts_x0 = True

    def __init__(self, forward: Any) -> None:
        self.forward = forward

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x, t, with_x0=True)


class _Distiller(_Trainer):
    """A training run whose objective is consistency distillation from ``teacher``."""

    def __init__(self, cfg: Config, workdir: Path, di: distributed.DistInfo, *,
                 settings: DistillSettings, teacher: torch.nn.Module,
                 teacher_latent: dict | None = None, latent: dict | None = None) -> None:
        # A latent teacher's student diffuses the teacher's latents: a fresh distillation takes
        # the teacher's record (autoencoder hash and scaling), not a scaling recomputed from the
        # data (which may differ in its last bits on another device).
        super().__init__(cfg, workdir, di, latent=latent if latent is not None else teacher_latent)
        self.settings = settings
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        # The student starts as the teacher ([Song23cm] Sec. 5); resume() overwrites both.
        self.model.load_state_dict(teacher.state_dict())
        self.ema.module.load_state_dict(teacher.state_dict())
        self.grid = distillation_grid(self.sde, settings.intervals,
                                      t_min=settings.t_min).to(self.device)
        self.student = _Student(self.forward)

    @classmethod
    def check_resumable(cls, state: dict[str, Any], path: Path) -> None:
        if "consistency" not in state:
            raise CheckpointError(f"{path} is a training run, not a distillation: distill into "
                                  "a new --workdir")

    def _loss(self, x0: torch.Tensor, y: torch.Tensor | None = None):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = consistency_distillation_loss(self.student, self.teacher, self.sde, x0,
                                                 self.grid, generator=self.noise_gen)
        return loss.mean(), None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "consistency": self.settings.to_dict()}

    def calibrate(self, *, keep_existing: bool = False) -> Path | None:
        """A consistency model has its own few-step sampler: no grid to calibrate."""
        return None

    def finish(self, *, keep_existing: bool = False) -> Path | None:
        return None  # the DDIM/ODE plots of a training run do not apply to a student


@dataclass(frozen=True)
class DistillResult:
    """A distillation: the training result, its settings, its seconds and the report (``None``
    when interrupted) and where it was written."""

    train: TrainResult
    settings: DistillSettings
    seconds: float
    report: dict[str, Any] | None
    report_path: Path | None


def distill_config(teacher_cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The teacher's config with :data:`DISTILL_TRAIN` and ``--set`` overrides (``train.*``
    only: the SDE, network and data are the teacher's).

    Raises:
        ConfigError: an override outside ``train.*``, or an invalid value.
    """
    d = to_dict(teacher_cfg)
    d["train"].update(DISTILL_TRAIN)
    for text in overrides:
        section, key, value = parse_override(text)
        if section != "train":
            raise ConfigError(f"--set {text}: a distillation keeps the teacher's {section}.* "
                              "(only train.* may be set)")
        d["train"][key] = value
    return from_dict(d)


def _check_settings(workdir: Path, settings: DistillSettings) -> None:
    """The run in ``workdir`` (if any) is this distillation: same method, teacher, grid."""
    found = latest_readable_checkpoint(workdir, set_aside=False)
    if found is None or "consistency" not in found[1]:
        return  # a fresh run; a training run's checkpoint is refused by _Distiller
    saved = found[1]["consistency"]
    for key in ("method", "teacher", "intervals", "t_min"):
        was, now = saved.get(key), getattr(settings, key)
        if was != now:
            raise ConfigError(f"cannot resume {workdir}: it distills with {key}={was!r}, not "
                              f"{now!r}; use a new --workdir")


def distill(
    ckpt: str | os.PathLike | None, workdir: str | os.PathLike | None = None, *,
    method: str = "consistency", steps: Any = (1, 2, 4), intervals: int = 18,
    overrides: list[str] | tuple[str, ...] = (), n_report: int = 256, progress: bool = True,
) -> DistillResult:
    """Distill the run ``ckpt`` into a few-step consistency model in ``workdir`` (default
    ``runs/<teacher>_consistency``), resuming a distillation already there.

    Args:
        ckpt: the teacher: a checkpoint, a run directory (its newest checkpoint) or a diffusers
            folder.
        method: ``"consistency"``.
        steps: the sampling step counts to report on.
        intervals: ``N`` of the distillation grid (Karras rho = 7, [Song23cm] Sec. 5).
        overrides: ``train.key=value`` settings (:data:`DISTILL_TRAIN` otherwise).
        n_report: prior draws of the report.

    Raises:
        UserInputError: an unknown method, bad steps or intervals, or a teacher that is itself
            distilled.
        ConfigError, CheckpointError: a ``workdir`` that holds another run or distillation.
    """
    from .runs import load_run

    if method not in METHODS:
        raise UserInputError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    steps = check_steps(steps)
    if isinstance(intervals, bool) or not isinstance(intervals, int) or not (
            1 <= intervals <= MAX_STEPS):
        raise UserInputError(f"--intervals must be an integer in [1, {MAX_STEPS}], got "
                             f"{intervals!r}")
    teacher = load_run(ckpt)
    if not isinstance(teacher.model, torch.nn.Module) or getattr(
            teacher.model, "is_consistency_model", False):
        raise UserInputError(f"{teacher.checkpoint} is already a distilled consistency model; "
                             "distill its teacher instead")
    cfg = distill_config(teacher.cfg, overrides)
    workdir = Path(workdir) if workdir is not None else (
        Path("runs") / f"{teacher.workdir.name}_consistency")
    if workdir.resolve() == teacher.workdir.resolve():
        raise UserInputError(f"--workdir {workdir} is the teacher's run; distill into a new one")
    settings = DistillSettings(method, str(teacher.checkpoint.resolve()), intervals,
                               float(teacher.sde.default_t_min), steps)
    _check_settings(workdir, settings)
    t0 = time.process_time()
    res = train(cfg, workdir, progress=progress, trainer=_Distiller, settings=settings,
                teacher=teacher.model,
                teacher_latent=None if teacher.codec is None else teacher.codec.metadata())
    seconds = time.process_time() - t0
    if res.interrupted:
        return DistillResult(res, settings, seconds, None, None)
    report = distill_report(res.checkpoint, teacher, settings, n=n_report, seed=cfg.train.seed)
    report["distill_cpu_seconds"] = seconds
    from .outputs import write_json

    path = write_json(report, workdir / "distill.json")
    return DistillResult(res, settings, seconds, report, path)


def distill_report(ckpt: Path, teacher: Any, settings: DistillSettings, *, n: int = 256,
                   seed: int = 0) -> dict[str, Any]:
    """The student at each of ``settings.steps`` against its teacher on ``n`` prior draws:
    energy distance to the teacher's probability-flow endpoints at ``t_min`` (dopri5, rtol =
    atol = 1e-5) of the student's samples and of the teacher's DDIM with as many calls."""
    from ..metrics import energy_distance
    from ..sampling import sample
    from .runs import load_run

    student = load_run(ckpt)
    sde, t_min = teacher.sde, settings.t_min
    device = next(student.model.parameters()).device
    x_T = sde.prior_sampling((n, *teacher.shape), generator=torch.Generator().manual_seed(seed),
                             device=device)
    ref = sample(teacher.model, sde, None, "ode", x_T=x_T, t_min=t_min, denoise=False).x
    flat = ref.flatten(1).double()
    rows = []
    for k in settings.steps:
        g = torch.Generator(device=device).manual_seed(seed + 1)
        cm = sample(student.model, sde, None, "consistency", x_T=x_T, steps=k, generator=g)
        ddim = sample(teacher.model, sde, None, "ddim", x_T=x_T, steps=k, t_min=t_min,
                      denoise=False)
        rows.append({"steps": k, "nfe": cm.nfe,
                     "energy_distance": float(energy_distance(cm.x.flatten(1).double(), flat)),
                     "teacher_ddim_energy_distance": float(energy_distance(
                         ddim.x.flatten(1).double(), flat)),
                     "mean_l2_to_teacher": float((cm.x - ref).flatten(1).norm(dim=1).mean())})
    return {"settings": settings.to_dict(), "n": n, "reference": "teacher PF-ODE (dopri5, tol "
            "1e-5) from the same x_T, at t_min", "rows": rows,
            "nonfinite": int(sum(not math.isfinite(r["energy_distance"]) for r in rows))}
