"""Training loop: DSM with AdamW, warmup, clipping, EMA, atomic checkpoints and exact resume.

A model with a learned variance (``model.learn_variance``) trains Improved DDPM's hybrid loss
(:mod:`.hybrid_loss`) instead of :func:`~sde_gen.losses.dsm_loss`; its importance sampler's history
(``train.vlb_importance``) is part of the checkpoint. A class-conditional model
(``model.class_cond``) trains on the data's labels, each replaced by the null label with
probability ``train.label_dropout`` ([Ho22] Alg. 1); the batcher's label-dropout generator is part
of the checkpoint.

A first-stage run (``model.name=autoencoder``) trains a :class:`~sde_gen.latent.KLAutoencoder` on
:func:`~sde_gen.latent.autoencoder_loss` with the same loop; a latent score model
(``model.autoencoder``) trains on the training images encoded once by that frozen autoencoder,
scaled by the factor recorded in its checkpoints (``latent``, with the autoencoder's hash, which
resuming checks).

Resuming restores the model, EMA, optimizer, step and every RNG the loop draws from, so a run that
is stopped and restarted ends with the same parameters, bit for bit, as one that never stopped.

:func:`train` reads in four parts, the methods of :class:`_Trainer`: build the objects of a run
from the config (``__init__``), restore them from the latest checkpoint (``resume``), advance them
one optimizer step at a time (``step_once``), and log, checkpoint and plot (``log``,
``checkpoint``, ``finish``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.batches import ImageBatches, ToyBatches
from ..ema import EMA
from ..errors import CheckpointError, NonFiniteLossError, UserInputError
from ..hybrid_loss import HybridLoss, VLBStepSampler, hybrid_loss
from ..latent import AutoencoderTerms, autoencoder_loss
from ..likelihood.vlb import discrete_chain
from ..losses import dsm_loss, make_weighting
from ..time_sampling import TimeSampler
from . import distributed
from .checkpoint import (
    check_resume_config,
    check_run_state,
    checkpoint_path,
    latest_readable_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    remove_stale_temps,
    save_checkpoint,
)
from .config import AUTOENCODER, Config, save_config, to_dict
from .distributed import resolve_device
from .factory import build_data, build_model, build_sde, is_image
from .outputs import dumps_strict
from .run_lock import run_lock
from .runs import weights_mismatch
from .threads import apply_thread_policy

__all__ = ["CheckpointError", "NonFiniteLossError", "TrainResult", "lr_at", "train", "use_bf16"]

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced (``interrupted``: stopped by SIGTERM/SIGINT, resumable;
    ``already_done``: the workdir's run had reached ``train.steps`` before, nothing was trained)."""

    workdir: Path
    step: int
    checkpoint: Path
    loss: float
    plot: Path | None
    interrupted: bool = False
    skipped_steps: int = 0
    already_done: bool = False
    calibration: Path | None = None


class _Interrupted(BaseException):
    """SIGTERM/SIGINT while the final plot is drawn (after :meth:`_StopFlag.raise_from_now`)."""


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the current step and stops.
    After :meth:`raise_from_now` (the final plot, which has no steps to stop between) a signal
    raises :class:`_Interrupted` instead."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}
        self._raise = False

    def raise_from_now(self) -> None:
        """From now on a signal raises :class:`_Interrupted` (at once, if one came already)."""
        self._raise = True
        if self.signal is not None:
            raise _Interrupted

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        if self._raise:
            raise _Interrupted

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup to ``train.lr`` over ``train.warmup`` steps ([Ho20] App. B), then constant or
    a cosine decay to zero at ``train.steps`` ([Loshchilov17] Eq. 5, no restarts)."""
    tc = cfg.train
    if tc.warmup > 0 and step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = (step - tc.warmup) / max(tc.steps - tc.warmup, 1)
    return tc.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _truncate_metrics(path: Path, step: int) -> dict[str, Any] | None:
    """Drop metric lines written after ``step`` (from a run that died past its last checkpoint)
    and a torn last line (from one killed while writing it); return the last record kept.

    Raises:
        UserInputError: a line other than the last is not a metrics record.
    """
    if not path.exists():
        return None
    lines = path.read_text(errors="replace").splitlines()  # torn bytes fail json.loads below
    keep: list[str] = []
    last = None
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and isinstance(rec.get("step"), int)
        except ValueError:  # json.JSONDecodeError
            ok = False
        if not ok:
            if i < len(lines) - 1:
                raise UserInputError(f"{path} line {i + 1} is not a metrics record; delete that "
                                     "line (or the file) to resume")
            print(f"warning: dropped the torn last line of {path} (a run killed while writing "
                  "it)", file=sys.stderr)
        elif rec["step"] <= step:
            keep.append(line)
            last = rec
    path.write_text("".join(ln + "\n" for ln in keep))
    return last


def _remove_stale_temps(workdir: Path) -> None:
    stale = remove_stale_temps(workdir)
    if stale:
        print(f"note: removed {len(stale)} temporary file(s) left by an interrupted write in "
              f"{workdir}", file=sys.stderr)


def _start_files(cfg: Config, workdir: Path, step: int) -> dict[str, Any] | None:
    """Write ``config.yaml`` and cut ``metrics.jsonl`` back to ``step``; its last record kept."""
    save_config(cfg, workdir / CONFIG)
    return _truncate_metrics(workdir / METRICS, step)


def _global_rows(values: torch.Tensor, shard: slice | None, batch: int,
                 world: int) -> torch.Tensor:
    """The whole batch's per-example values from each rank's ``shard`` rows (identical on all)."""
    if shard is None:
        return values.detach()
    full = values.new_zeros(batch)
    full[shard] = values.detach()
    return distributed.all_reduce(full, "mean") * world  # one rank is non-zero per row


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast: ``precision=bf16``, or ``auto`` on CUDA."""
    precision = cfg.train.precision
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _append(metrics, line: str) -> None:
    metrics.write(line + "\n")
    metrics.flush()


def _write_grid(model, sde, cfg: Config, shape, path: Path, device: torch.device,
                codec=None, images: torch.Tensor | None = None) -> None:
    """EMA sample grid with DDIM (50 NFE; latents decoded by ``codec``), nearest-neighbour
    upscaled, written atomically; for an autoencoder, ``images`` (uint8) over their
    reconstructions."""
    from ..sampling import sample
    from ..scaling import from_model, uint8_to_model
    from .plots import image_grid, save_grid

    with torch.no_grad():
        if images is not None:
            x = uint8_to_model(images.to(device))
            mu, _ = model.posterior(x)
            x = torch.cat([x, model.decode(mu)])
        else:
            g = torch.Generator(device=device).manual_seed(cfg.train.seed)
            x = sample(model, sde, (cfg.train.sample_n, *shape), "ddim", steps=49, generator=g,
                       device=device).x
            x = x if codec is None else codec.decode(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp_" + path.name)
    save_grid(image_grid(from_model(x.float().cpu()), nrow=int(math.sqrt(cfg.train.sample_n))), tmp)
    os.replace(tmp, path)


#: Files that make a folder a diffusers model (a pipeline, or a UNet with its weights).
DIFFUSERS_MARKERS = ("model_index.json", "unet/config.json",
                     "config.json+diffusion_pytorch_model.safetensors",
                     "config.json+diffusion_pytorch_model.bin")


def check_workdir(workdir: str | os.PathLike) -> None:
    """Refuse a run directory that holds a diffusers model (:data:`DIFFUSERS_MARKERS`): a run
    written into it would mix with the pipeline's files.

    Raises:
        UserInputError: naming the folder and the file that marks it.
    """
    workdir = Path(workdir)
    for marker in DIFFUSERS_MARKERS:
        if all((workdir / part).is_file() for part in marker.split("+")):
            raise UserInputError(
                f"--workdir {workdir} holds a diffusers model ({marker.split('+')[0]}); a run "
                "written there would mix with its files: use a new --workdir (the diffusers "
                "folder itself is used with --ckpt)")


def _write_latent_record(workdir: Path, cfg: Config, codec) -> None:
    """``latent.json``: the autoencoder and the latent scaling of a latent run, for reading."""
    from .atomic import write_atomic

    text = dumps_strict({"autoencoder": cfg.model.autoencoder, **codec.metadata()})
    write_atomic(workdir / "latent.json", lambda tmp: tmp.write_text(text + "\n"))


def train(cfg: Config, workdir: str | os.PathLike, *, progress: bool = True,
          trainer: type[_Trainer] | None = None, **trainer_args: Any) -> TrainResult:
    """Train the eps-model of ``cfg`` in ``workdir`` (see :func:`_train`); under ``torchrun`` with
    several processes it joins the process group and trains with DDP (:mod:`.distributed`).

    The process that writes the run (rank 0) holds ``workdir``'s run lock (:mod:`.run_lock`)
    throughout, so a second ``train`` on the same directory fails at once. ``trainer`` (a
    subclass of ``_Trainer`` built with ``trainer_args``) replaces the objective and keeps the
    loop, checkpoints and resume: :mod:`.distill`'s consistency distillation."""
    check_workdir(workdir)  # before the lock file is created in it
    di = distributed.setup(resolve_device(cfg.train.device))
    try:
        with ExitStack() as held:  # rank 0 holds the lock; a failure to take it stops every rank
            distributed.on_main(lambda: held.enter_context(run_lock(workdir)))
            return _train(cfg, workdir, di, progress=progress and di.is_main,
                          trainer=trainer or _Trainer, trainer_args=trainer_args)
    finally:
        if di.enabled:
            distributed.cleanup()


def _train(cfg: Config, workdir: str | os.PathLike, di: distributed.DistInfo, *,
           progress: bool = True, trainer: type[_Trainer] | None = None,
           trainer_args: dict[str, Any] | None = None) -> TrainResult:
    """Train the eps-model of ``cfg`` in ``workdir``, resuming from its latest checkpoint.

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoints/ckpt_*.pt`` and, for 2-D data,
    ``samples.png``.

    Raises:
        UserInputError: the workdir's run is already past ``train.steps``.
        ConfigError: ``cfg`` differs from the run's saved config in a key that may not change on
            resume (:data:`~.config.RESUMABLE_KEYS`).
        CheckpointError: its checkpoint does not fit ``cfg``, or one cannot be written.
        NonFiniteLossError: ``train.max_nonfinite`` consecutive non-finite steps.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Checked before anything is built, written or trained (rank 0 alone sets torn ones aside).
    found = latest_readable_checkpoint(workdir, set_aside=di.is_main)
    if found is not None:
        check_run_state(found[1], found[0], resume=True)
        check_resume_config(cfg, found[1]["config"], workdir)
    trainer = trainer or _Trainer
    if found is not None:
        trainer.check_resumable(found[1], found[0])
    distributed.on_main(_remove_stale_temps, workdir)  # under the run lock: no write is running
    if found is not None and cfg.model.autoencoder and "latent" not in found[1]:
        raise CheckpointError(f"cannot resume {workdir}: its checkpoint {found[0]} records no "
                              "autoencoder (it is not a latent-diffusion run); use a new --workdir")
    run = trainer(cfg, workdir, di, latent=found[1].get("latent") if found else None,
                  **(trainer_args or {}))
    run.resume(found)
    tc = cfg.train
    if run.step > tc.steps:  # checked before config.yaml is overwritten with the lower steps
        raise UserInputError(f"the run in {workdir} is already at step {run.step}, past "
                             f"train.steps={tc.steps}; set train.steps above {run.step} to go on "
                             "training it, or use a new --workdir")
    last_logged = distributed.on_main(_start_files, cfg, workdir, run.step)
    already_done = run.step == tc.steps
    if already_done and last_logged is not None:
        logged = last_logged.get("loss")  # null: a non-finite loss (strict JSON)
        run.loss_value = float(logged) if isinstance(logged, (int, float)) else math.nan

    run.start_clock()
    bar = tqdm(total=tc.steps, initial=run.step, disable=not progress, desc="train", unit="it")
    metrics = distributed.on_main((workdir / METRICS).open, "a")  # rank 0 writes the run
    first_step, plot, calibration = run.step, None, None
    try:
        with _StopFlag() as stop:
            while run.step < tc.steps and not run.stopping:
                loss, terms = run.step_once(stop)
                bar.update(1)
                run.log(loss, terms, metrics, bar)
                run.checkpoint()
            bar.close()
            run.check_trained(first_step)
            if not run.stopping:
                try:  # a signal now interrupts the plot: the checkpoint is complete already
                    stop.raise_from_now()
                    plot = run.finish(keep_existing=already_done)
                    calibration = run.calibrate(keep_existing=already_done)
                except _Interrupted:
                    run.stopping = True
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return TrainResult(workdir=workdir, step=run.step, checkpoint=list_checkpoints(workdir)[-1],
                       loss=run.loss_value, plot=plot, interrupted=run.stopping,
                       skipped_steps=run.skipped, already_done=already_done,
                       calibration=calibration)


class _Trainer:
    """The objects of one training run and the four things done with them: build them from the
    config (``__init__``), restore them from a checkpoint (:meth:`resume`), advance them one
    optimizer step (:meth:`step_once`), and log, checkpoint and plot (:meth:`log`,
    :meth:`checkpoint`, :meth:`finish`)."""

    def __init__(self, cfg: Config, workdir: Path, di: distributed.DistInfo,
                 latent: dict[str, Any] | None = None) -> None:
        self.cfg, self.workdir, self.di = cfg, workdir, di
        self.device, self.main = di.device, di.is_main
        tc = cfg.train
        self.shard = di.shard(tc.batch_size) if di.enabled else None
        self.sde = build_sde(cfg.sde)
        self.data = build_data(cfg.data)
        self.images = images = is_image(cfg.data)
        self.autoencoder = cfg.model.name == AUTOENCODER
        device = self.device
        apply_thread_policy(cfg, device)  # on the CPU, one thread for 2-D data (.threads)
        # Latent diffusion: the frozen codec and the training images' latents (checked first).
        self.codec, self.train_data = None, self.data
        if cfg.model.autoencoder:
            from .autoencoders import encode_training_set

            self.codec, self.train_data = encode_training_set(cfg, self.data, device, latent)
            distributed.on_main(_write_latent_record, workdir, cfg, self.codec)
        channels_last = images and tc.channels_last and device.type == "cuda"
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(tc.seed)
            self.model = build_model(cfg, self.sde, shape=None if self.codec is None else
                                     self.train_data.shape).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, tc.ema_decay, mode=tc.ema_mode, sigma_rel=tc.ema_sigma_rel)
        self.weighting = make_weighting(tc.weighting, gamma=tc.min_snr_gamma,
                                        sigma_data=cfg.model.sigma_data)
        self.time_sampling = TimeSampler(tc.time_sampling, p_mean=tc.p_mean, p_std=tc.p_std,
                                         logit_mean=tc.logit_mean, logit_std=tc.logit_std,
                                         shift=tc.time_shift)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc.lr,
                                     weight_decay=tc.weight_decay, **fused)
        # Class-conditional batches are (x0, y) with labels dropped to the null label.
        self.num_classes = self.model.num_classes
        labels = ({} if self.num_classes is None else
                  dict(num_classes=self.num_classes, label_dropout=tc.label_dropout))
        if images:
            self.batches = ImageBatches(self.train_data, batch_size=tc.batch_size, device=device,
                                        seed=tc.seed, flip=cfg.data.flip,
                                        channels_last=channels_last, **labels)
        else:
            self.batches = ToyBatches(self.data, batch_size=tc.batch_size, device=device,
                                      seed=tc.seed, **labels)
        self.noise_gen = torch.Generator(device=device).manual_seed(tc.seed + 1)
        wrapped = self.model
        if di.enabled:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(
                self.model, device_ids=[di.local_rank] if device.type == "cuda" else None)
        self.forward = torch.compile(wrapped) if tc.compile else wrapped
        self.bf16 = use_bf16(cfg, device)
        # A learned variance trains L_simple + lambda L_vlb on DDPM's steps ([Nichol21]).
        self.hybrid = cfg.model.learn_variance
        self.chain = discrete_chain(self.sde, device=device) if self.hybrid else None
        self.vlb_sampler = (VLBStepSampler(self.sde.N, device=device)
                            if self.hybrid and tc.vlb_importance else None)
        # What the loop advances (restored by resume) and its bookkeeping.
        self.step, self.skipped, self.bad_run = 0, 0, 0
        self.stopping = False
        self.loss_value = math.nan
        self.t_start = self.t_last = time.perf_counter()  # reset by start_clock
        self.s_last = 0

    # -- resume ----------------------------------------------------------------------------------
    @classmethod
    def check_resumable(cls, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint that another kind of run wrote (``sde-gen distill``'s).

        Raises:
            CheckpointError: naming the checkpoint and the command that resumes it.
        """
        if "consistency" in state:
            raise CheckpointError(f"{path} is a consistency distillation, not a training run: "
                                  "resume it with sde-gen distill, or use a new --workdir")

    def resume(self, found: tuple[Path, dict[str, Any]] | None) -> None:
        """Restore every object and RNG from ``found``, the newest readable checkpoint and its
        path (see :func:`~.checkpoint.latest_readable_checkpoint`), if there is one."""
        if found is None:
            return
        path, state = found
        check_run_state(state, path, resume=True)
        for entry in ("model", "ema"):  # one line naming the keys, not torch's listing
            problem = weights_mismatch(self.model, state[entry])
            if problem is not None:
                raise CheckpointError(f"the checkpoint {path} does not match this config's "
                                      f"model ({entry}: {problem}); use a new --workdir or the "
                                      "run's own config")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"], num_updates=int(
                state.get("ema_updates", int(state["step"]) - int(state.get("skipped", 0)))))
            self.opt.load_state_dict(state["optimizer"])
            self.batches.load_state_dict(state["data"])
            if self.vlb_sampler is not None:
                self.vlb_sampler.load_state_dict(state["vlb_sampler"])
            self.noise_gen.set_state(state["noise_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:200]
            raise CheckpointError(
                f"the checkpoint in {self.workdir} does not match this config ({first}); use a "
                "new --workdir or the run's own config") from None
        self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))

    def start_clock(self) -> None:
        """Train mode, and the clocks of ``train.max_seconds`` and of the logged rates."""
        self.model.train()
        self.t_start = self.t_last = time.perf_counter()
        self.s_last = self.step

    # -- one optimizer step ----------------------------------------------------------------------
    def _loss(self, x0: torch.Tensor, y: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, HybridLoss | AutoencoderTerms | None]:
        """The batch's mean training loss (and the hybrid loss's terms, for a learned variance;
        the autoencoder's, for a first stage); ``y``: the labels of a class-conditional model."""
        tc = self.cfg.train
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.autoencoder:
                terms = autoencoder_loss(self.forward, x0, kl_weight=tc.kl_weight,
                                         generator=self.noise_gen)
                return terms.loss.mean(), terms
            if self.hybrid:
                terms = hybrid_loss(
                    self.forward, self.sde, x0, vlb_weight=tc.vlb_weight, reduce=tc.reduce,
                    discrete_data=self.images, sampler=self.vlb_sampler, chain=self.chain,
                    generator=self.noise_gen, shard=self.shard, y=y)
                return terms.loss.mean(), terms
            return dsm_loss(
                self.forward, self.sde, x0, weighting=self.weighting,
                time_sampling=self.time_sampling, t_eps=tc.t_eps, reduce=tc.reduce,
                discrete=tc.discrete, generator=self.noise_gen, shard=self.shard, y=y,
            ).mean(), None

    def step_once(self, stop: _StopFlag) -> tuple[torch.Tensor, HybridLoss | None]:
        """Draw a batch, backpropagate, and apply the update unless the loss or gradient is
        non-finite on any rank; also decide (on all ranks alike) whether to stop after it."""
        tc = self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
        batch = self.batches.next()
        loss, terms = self._loss(*batch) if self.num_classes is not None else self._loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        # One host sync per step: a NaN/Inf loss or gradient (on any rank) skips the update.
        ok = (torch.isfinite(loss) & torch.isfinite(grad_norm)).float()
        local_stop = stop.signal is not None or bool(
            tc.max_seconds and time.perf_counter() - self.t_start > tc.max_seconds)
        if self.di.enabled:
            flags = torch.stack([1 - ok, torch.tensor(float(local_stop), device=ok.device)])
            flags = distributed.all_reduce(flags, "max")  # any rank bad / any rank stopping
            ok, self.stopping = 1 - flags[0], bool(flags[1])
        else:
            self.stopping = local_stop
        if bool(ok):
            self.opt.step()
            self.ema.update(self.model)
            self.bad_run = 0
            if self.vlb_sampler is not None:
                self.vlb_sampler.update(terms.steps, _global_rows(
                    terms.vlb, self.shard, tc.batch_size, self.di.world))
        else:
            self.skipped, self.bad_run = self.skipped + 1, self.bad_run + 1
            if self.bad_run >= tc.max_nonfinite:
                last = list_checkpoints(self.workdir)
                raise NonFiniteLossError(
                    f"{self.bad_run} consecutive steps with a non-finite loss or gradient at step "
                    f"{self.step + 1}; stopped. Last good checkpoint: "
                    f"{last[-1] if last else 'none'} (try a lower train.lr)")
        self.step += 1
        return loss, terms

    def check_trained(self, first_step: int) -> None:
        """A run none of whose steps (since ``first_step``) updated the weights is a failure,
        not a result: every step had a non-finite loss or gradient.

        Raises:
            NonFiniteLossError: naming the count and the checkpoint, which holds the weights
                the run started from.
        """
        done = self.step - first_step
        if done > 0 and self.bad_run >= done and not self.stopping:
            raise NonFiniteLossError(
                f"all {done} steps of this run had a non-finite loss or gradient and were "
                f"skipped; nothing was trained (the checkpoint at step {self.step} holds the "
                "weights the run started from); check train.lr and the sde/model config")

    # -- logging, checkpoints, plots -------------------------------------------------------------
    def log(self, loss: torch.Tensor, terms: HybridLoss | None, metrics, bar) -> None:
        """Every ``train.log_every`` steps (and at the last): one metrics line, the bar's postfix;
        every ``train.sample_every`` steps: an image grid."""
        tc, step = self.cfg.train, self.step
        if step % tc.log_every == 0 or step == tc.steps:
            self.loss_value = distributed.all_reduce(loss.detach().float(), "mean").item()
            now = time.perf_counter()
            rate = (step - self.s_last) / max(now - self.t_last, 1e-9)
            self.t_last, self.s_last = now, step
            rec = {"step": step, "loss": self.loss_value, "lr": lr_at(step - 1, self.cfg),
                   "it_s": rate, "img_s": rate * tc.batch_size, "skipped": self.skipped}
            if isinstance(terms, AutoencoderTerms):  # nats per image / latent dim
                d = self.data.shape
                rec["nll"] = terms.nll.detach().float().mean().item() / math.prod(d)
                rec["kl"] = terms.kl.detach().float().mean().item()
            elif terms is not None:  # the mean L_t of the batch (nats, reduced like the MSE)
                rec["vlb"] = distributed.all_reduce(terms.vlb.detach().float().mean(),
                                                    "mean").item()
            distributed.on_main(_append, metrics, dumps_strict(rec))
            bar.set_postfix(loss=f"{self.loss_value:.4f}", img_s=f"{rate * tc.batch_size:.0f}")
        if self.images and tc.sample_every and step % tc.sample_every == 0:
            distributed.on_main(self._grid, self.workdir / "samples" / f"step_{step:09d}.png")

    def _grid(self, path: Path) -> None:
        """The EMA model's grid: samples (decoded, for latents) or reconstructions."""
        shape = self.train_data.shape
        images = self.data.x[:self.cfg.train.sample_n] if self.autoencoder else None
        _write_grid(self.ema.module, self.sde, self.cfg, shape, path, self.device,
                    codec=self.codec, images=images)

    def checkpoint(self) -> None:
        """Every ``train.ckpt_every`` steps, at the last and when stopping: write (rank 0) and
        prune checkpoints; all ranks wait for it, and all stop with its error if it fails."""
        tc, step = self.cfg.train, self.step
        if not (step % tc.ckpt_every == 0 or step == tc.steps or self.stopping):
            return
        distributed.on_main(self._save_and_prune)  # a failure stops every rank, none waits

    def _save_and_prune(self) -> None:
        save_checkpoint(self.state_dict(), checkpoint_path(self.workdir, self.step))
        prune_checkpoints(self.workdir, self.cfg.train.keep)

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`resume` restores (see :func:`~.checkpoint.check_run_state`)."""
        state = {"step": self.step, "model": self.model.state_dict(),
                 "ema": self.ema.state_dict(), "ema_updates": self.ema.num_updates,
                 "optimizer": self.opt.state_dict(), "data": self.batches.state_dict(),
                 "noise_rng": self.noise_gen.get_state(), "config": to_dict(self.cfg),
                 "skipped": self.skipped}
        if self.vlb_sampler is not None:
            state["vlb_sampler"] = self.vlb_sampler.state_dict()
        if self.codec is not None:
            state["latent"] = self.codec.metadata()
        return state

    def calibrate(self, *, keep_existing: bool = False) -> Path | None:
        """At ``train.steps``, rank 0 of a single-process run calibrates the fast solver's grid at
        ``train.calibrate_nfe`` within ``train.calibrate_budget`` seconds (0: off) on the final
        checkpoint's EMA model, as ``sde-gen calibrate`` does (``keep_existing``: unless the
        run has its calibration already); returns the file."""
        from .calibration import FILE, calibrate_run, save_calibrations
        from .runs import load_run

        tc, path = self.cfg.train, self.workdir / FILE
        if (not self.main or self.di.enabled or self.step != tc.steps or not tc.calibrate_nfe
                or tc.calibrate_budget <= 0 or self.cfg.model.name == "autoencoder"):
            return None  # an autoencoder has no sampler to calibrate
        if keep_existing and path.is_file():
            return path
        run = load_run(list_checkpoints(self.workdir)[-1], device=self.device)
        n = 32 if self.images else 256  # a tight ODE solve of each: images cost more per draw
        cals = calibrate_run(run.model, run.sde, run.shape, list(tc.calibrate_nfe),
                             budget_s=tc.calibrate_budget, n=n, n_val=n, seed=tc.seed,
                             device=self.device)
        return save_calibrations(path, cals, run.sde, run.model)

    def finish(self, *, keep_existing: bool = False) -> Path | None:
        """At ``train.steps``, rank 0 writes the final EMA sample plot (``keep_existing``: unless
        it is there already); returns its path."""
        tc, plot = self.cfg.train, self.workdir / "samples.png"
        if not self.main or self.step != tc.steps or not (self.images or tc.plot_samples > 0):
            return None
        if keep_existing and plot.is_file():
            return plot
        if self.images:
            self._grid(plot)
            return plot
        from .plots import plot_toy_samples

        return plot_toy_samples(self.ema.module, self.sde, self.data, plot, n=tc.plot_samples,
                                seed=tc.seed)
