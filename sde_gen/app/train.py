"""Training loop: DSM with AdamW, warmup, clipping, EMA, atomic checkpoints and exact resume.

A model with a learned variance (``model.learn_variance``) trains Improved DDPM's hybrid loss
(:mod:`.hybrid_loss`) instead of :func:`~sde_gen.losses.dsm_loss`; its importance sampler's history
(``train.vlb_importance``) is part of the checkpoint.

Resuming restores the model, EMA, optimizer, step and every RNG the loop draws from, so a run that
is stopped and restarted ends with the same parameters, bit for bit, as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from .config import Config, save_config, to_dict
from ..ema import EMA
from . import distributed
from .distributed import resolve_device
from ..data.batches import ImageBatches, ToyBatches
from .factory import build_data, build_model, build_sde, is_image
from ..hybrid_loss import VLBStepSampler, hybrid_loss
from ..likelihood.vlb import discrete_chain
from ..losses import dsm_loss, make_weighting
from ..time_sampling import TimeSampler

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced (``interrupted``: stopped by SIGTERM/SIGINT, resumable)."""

    workdir: Path
    step: int
    checkpoint: Path
    loss: float
    plot: Path | None
    interrupted: bool = False
    skipped_steps: int = 0


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the current step and stops."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _resume_state(workdir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint, loaded onto the CPU; unreadable ones are reported and skipped.

    Loaded onto the CPU because ``torch.Generator.set_state`` takes a CPU ByteTensor, also for a
    CUDA generator; ``load_state_dict`` moves weights and optimizer state to their device.
    """
    for path in reversed(list_checkpoints(workdir)):
        try:
            return load_checkpoint(path, map_location="cpu")
        except CheckpointError as e:
            print(f"warning: {e}; falling back to the previous checkpoint", file=sys.stderr)
            path.replace(path.with_name(path.name + ".corrupt"))  # never picked or pruned again
    return None


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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after ``step`` (from a run that died past its last checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _state(step, model, ema, opt, batches, noise_gen, cfg) -> dict[str, Any]:
    return {
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "ema_updates": ema.num_updates,
        "optimizer": opt.state_dict(),
        "data": batches.state_dict(),
        "noise_rng": noise_gen.get_state(),
        "config": to_dict(cfg),
    }


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
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")


def _write_grid(model, sde, cfg: Config, shape, path: Path, device: torch.device) -> None:
    """EMA sample grid with DDIM (50 NFE), written atomically."""
    from torchvision.utils import save_image

    from ..scaling import from_model
    from ..sampling import sample

    g = torch.Generator(device=device).manual_seed(cfg.train.seed)
    x = sample(model, sde, (cfg.train.sample_n, *shape), "ddim", steps=49, generator=g,
               device=device).x
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp_" + path.name)
    save_image(from_model(x.float().cpu()), tmp, nrow=int(math.sqrt(cfg.train.sample_n)),
               format="png")
    os.replace(tmp, path)


def train(cfg: Config, workdir: str | os.PathLike, *, progress: bool = True) -> TrainResult:
    """Train the eps-model of ``cfg`` in ``workdir`` (see :func:`_train`); under ``torchrun`` with
    several processes it joins the process group and trains with DDP (:mod:`.distributed`)."""
    di = distributed.setup(resolve_device(cfg.train.device))
    try:
        return _train(cfg, workdir, di, progress=progress and di.is_main)
    finally:
        if di.enabled:
            distributed.cleanup()


def _train(cfg: Config, workdir: str | os.PathLike, di: distributed.DistInfo, *,
           progress: bool = True) -> TrainResult:
    """Train the eps-model of ``cfg`` in ``workdir``, resuming from its latest checkpoint.

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoints/ckpt_*.pt`` and, for 2-D data,
    ``samples.png``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device, main = di.device, di.is_main
    tc = cfg.train
    shard = di.shard(tc.batch_size) if di.enabled else None
    sde = build_sde(cfg.sde)
    data = build_data(cfg.data)
    images = is_image(cfg.data)
    if device.type == "cpu":
        # The 2-D MLP's ops are small: on a 2-core machine torch's default intra-op threading
        # made the default run 5x slower in wall time (550 s vs ~100 s) than one thread.
        torch.set_num_threads(tc.threads or (torch.get_num_threads() if images else 1))
    channels_last = images and tc.channels_last and device.type == "cuda"
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(tc.seed)
        model = build_model(cfg, sde).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, tc.ema_decay, mode=tc.ema_mode, sigma_rel=tc.ema_sigma_rel)
    weighting = make_weighting(tc.weighting, gamma=tc.min_snr_gamma, sigma_data=cfg.model.sigma_data)
    time_sampling = TimeSampler(tc.time_sampling, p_mean=tc.p_mean, p_std=tc.p_std)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, **fused)
    if images:
        batches = ImageBatches(data, batch_size=tc.batch_size, device=device, seed=tc.seed,
                               flip=cfg.data.flip, channels_last=channels_last)
    else:
        batches = ToyBatches(data, batch_size=tc.batch_size, device=device, seed=tc.seed)
    noise_gen = torch.Generator(device=device).manual_seed(tc.seed + 1)
    wrapped = model
    if di.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            model, device_ids=[di.local_rank] if device.type == "cuda" else None)
    forward = torch.compile(wrapped) if tc.compile else wrapped
    bf16 = use_bf16(cfg, device)
    hybrid = cfg.model.learn_variance  # L_simple + lambda L_vlb on DDPM's steps ([Nichol21])
    chain = discrete_chain(sde, device=device) if hybrid else None
    vlb_sampler = VLBStepSampler(sde.N, device=device) if hybrid and tc.vlb_importance else None

    step, skipped, bad_run = 0, 0, 0
    state = _resume_state(workdir)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"], num_updates=int(
                state.get("ema_updates", int(state["step"]) - int(state.get("skipped", 0)))))
            opt.load_state_dict(state["optimizer"])
            batches.load_state_dict(state["data"])
            if vlb_sampler is not None:
                vlb_sampler.load_state_dict(state["vlb_sampler"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0][:200]
            raise CheckpointError(f"the checkpoint in {workdir} does not match this config "
                                  f"({first}); use a new --workdir or the run's own config") from None
        noise_gen.set_state(state["noise_rng"])
        step, skipped = int(state["step"]), int(state.get("skipped", 0))
    metrics_path = workdir / METRICS
    if main:
        save_config(cfg, workdir / CONFIG)
        _truncate_metrics(metrics_path, step)

    model.train()
    loss_value = math.nan
    bar = tqdm(total=tc.steps, initial=step, disable=not progress, desc="train", unit="it")
    t_last, s_last = time.perf_counter(), step
    t_start = t_last
    metrics = metrics_path.open("a") if main else None
    stopping = False
    with _StopFlag() as stop:
        while step < tc.steps and not stopping:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            x0 = batches.next()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if hybrid:
                    terms = hybrid_loss(
                        forward, sde, x0, vlb_weight=tc.vlb_weight, reduce=tc.reduce,
                        discrete_data=images, sampler=vlb_sampler, chain=chain,
                        generator=noise_gen, shard=shard)
                    loss = terms.loss.mean()
                else:
                    loss = dsm_loss(
                        forward, sde, x0, weighting=weighting, time_sampling=time_sampling,
                        t_eps=tc.t_eps, reduce=tc.reduce, discrete=tc.discrete,
                        generator=noise_gen, shard=shard,
                    ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            # One host sync per step: a NaN/Inf loss or gradient (on any rank) skips the update.
            ok = (torch.isfinite(loss) & torch.isfinite(grad_norm)).float()
            local_stop = stop.signal is not None or bool(
                tc.max_seconds and time.perf_counter() - t_start > tc.max_seconds)
            if di.enabled:
                flags = torch.stack([1 - ok, torch.tensor(float(local_stop), device=ok.device)])
                flags = distributed.all_reduce(flags, "max")  # any rank bad / any rank stopping
                ok, stopping = 1 - flags[0], bool(flags[1])
            else:
                stopping = local_stop
            if bool(ok):
                opt.step()
                ema.update(model)
                bad_run = 0
                if vlb_sampler is not None:
                    vlb_sampler.update(terms.steps, _global_rows(terms.vlb, shard, tc.batch_size,
                                                                 di.world))
            else:
                skipped, bad_run = skipped + 1, bad_run + 1
                if bad_run >= tc.max_nonfinite:
                    last = list_checkpoints(workdir)
                    raise NonFiniteLossError(
                        f"{bad_run} consecutive steps with a non-finite loss or gradient at step "
                        f"{step + 1}; stopped. Last good checkpoint: "
                        f"{last[-1] if last else 'none'} (try a lower train.lr)")
            step += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                loss_value = distributed.all_reduce(loss.detach().float(), "mean").item()
                now = time.perf_counter()
                rate = (step - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, step
                rec = {"step": step, "loss": loss_value, "lr": lr_at(step - 1, cfg), "it_s": rate,
                       "img_s": rate * tc.batch_size, "skipped": skipped}
                if hybrid:  # the mean L_t of the batch (nats, reduced like the MSE)
                    rec["vlb"] = distributed.all_reduce(terms.vlb.detach().float().mean(),
                                                        "mean").item()
                if main:
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate * tc.batch_size:.0f}")
            if main and images and tc.sample_every and step % tc.sample_every == 0:
                _write_grid(ema.module, sde, cfg, data.shape,
                            workdir / "samples" / f"step_{step:09d}.png", device)
            if step % tc.ckpt_every == 0 or step == tc.steps or stopping:
                if main:
                    state = _state(step, model, ema, opt, batches, noise_gen, cfg)
                    state["skipped"] = skipped
                    if vlb_sampler is not None:
                        state["vlb_sampler"] = vlb_sampler.state_dict()
                    save_checkpoint(state, checkpoint_path(workdir, step))
                    prune_checkpoints(workdir, tc.keep)
                distributed.barrier()
    bar.close()
    if metrics is not None:
        metrics.close()
    ckpt = list_checkpoints(workdir)[-1]
    plot = None
    if not main:
        pass
    elif images and step == tc.steps:
        plot = workdir / "samples.png"
        _write_grid(ema.module, sde, cfg, data.shape, plot, device)
    elif tc.plot_samples > 0 and step == tc.steps:
        from .plots import plot_toy_samples

        plot = plot_toy_samples(ema.module, sde, data, workdir / "samples.png",
                                n=tc.plot_samples, seed=tc.seed)
    return TrainResult(workdir=workdir, step=step, checkpoint=ckpt, loss=loss_value, plot=plot,
                       interrupted=stopping, skipped_steps=skipped)
