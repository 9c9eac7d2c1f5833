"""``sde-gen eval``: sample quality (FID when available, FD-classifier) and bits/dim in one report.

FD-classifier is the Fréchet distance between features of a small classifier that sde-gen trains
on the dataset itself (cached under ``~/.cache/sde_gen/classifiers``). It is *not* FID: its
numbers are comparable only with other FD-classifier numbers on the same dataset and cache.
FID needs Inception weights, which torchmetrics downloads on first use; offline it is skipped with
a message.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.images import ImageData
from ..errors import CheckpointError, UserInputError
from ..metrics import frechet_distance
from ..nets.classifier import FeatureClassifier
from ..sampling.result import count_nonfinite
from ..scaling import from_model, uint8_to_model
from .checkpoint import save_checkpoint
from .factory import build_data, is_image
from .generate import generate
from .likelihood_report import evaluate_likelihood
from .outputs import note
from .runs import LoadedRun, weights_mismatch

NOT_IMAGES = "sde-gen eval is for image runs; use 'sde-gen likelihood' for 2-D data"
CACHE = Path(os.environ.get("SDE_GEN_CACHE", "~/.cache/sde_gen")).expanduser() / "classifiers"


def train_classifier(data: ImageData, *, steps: int = 1500, batch_size: int = 128, seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[FeatureClassifier, float]:
    """Train the feature classifier with Adam; return it and its training-batch accuracy."""
    if data.y is None or data.num_classes is None:
        raise UserInputError(f"dataset {data.name} has no labels: FD-classifier needs a labelled "
                             "set")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(data.shape[0], data.num_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    acc = 0.0
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        x, y = uint8_to_model(data.x[idx]).to(device), data.y[idx].to(device)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - 50:
            acc += (logits.argmax(1) == y).float().mean().item() / 50
    return net.eval().requires_grad_(False), acc


def classifier_cache_path(data: ImageData, steps: int) -> Path:
    """Where the classifier for ``data`` trained ``steps`` steps is cached: the file name holds
    the data's name, shape and size, for people, and a hash of what determines the classifier,
    for the lookup (see :func:`data_digest`)."""
    shape = "x".join(map(str, data.shape))
    return CACHE / f"{data.name}_{shape}_{len(data)}_{steps}_{data_digest(data, steps)[:16]}.pt"


def data_digest(data: ImageData, steps: int) -> str:
    """SHA-256 of what the cached classifier depends on: the pixels, the labels, the number of
    classes, ``steps`` and the classifier's layout and training recipe (:data:`RECIPE`), so two
    datasets of the same name, shape and size never share a classifier."""
    h = hashlib.sha256(f"{RECIPE};{tuple(data.x.shape)};{data.num_classes};{steps};".encode())
    h.update(data.x.contiguous().numpy().data)
    if data.y is not None:
        h.update(data.y.contiguous().numpy().data)
    return h.hexdigest()


#: Changed whenever :func:`train_classifier` or :class:`FeatureClassifier` change what they make.
RECIPE = "fd-classifier-1;adam-2e-3;batch-128;seed-0"


def load_or_train_classifier(data: ImageData, *, device: torch.device | str = "cpu",
                             steps: int = 1500) -> FeatureClassifier:
    """The cached classifier for this dataset (:func:`classifier_cache_path`: keyed by a hash
    of the pixels, labels, number of classes and ``steps``), or a newly trained and cached one.

    A cache file that cannot be read or does not fit (torn write, another classifier layout, or a
    file whose recorded data hash is not this data's) is reported on stderr and replaced by a
    freshly trained classifier; the cache is written atomically, and a cache that cannot be
    written is only a warning.
    """
    path = classifier_cache_path(data, steps)
    digest = data_digest(data, steps)
    if path.exists():
        try:
            return _load_classifier(path, data, device, digest)
        except Exception as e:  # torch.load raises many types for torn or foreign files
            print(f"warning: cached classifier {path} is unreadable ({_reason(e)}); retraining it",
                  file=sys.stderr)
    net, acc = train_classifier(data, steps=steps, device=device)
    try:
        save_checkpoint({"model": net.state_dict(), "num_classes": data.num_classes,
                         "train_acc": acc, "data_sha256": digest}, path)
    except CheckpointError as e:
        print(f"warning: {e}; the classifier is not cached", file=sys.stderr)
    return net


def _load_classifier(path: Path, data: ImageData, device: torch.device | str,
                     digest: str) -> FeatureClassifier:
    """The classifier cached at ``path``; raises on a file that is unreadable or does not fit."""
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError("not a classifier checkpoint")
    if state.get("num_classes") != data.num_classes:
        raise ValueError(f"it has {state.get('num_classes')!r} classes, the data "
                         f"{data.num_classes}")
    net = FeatureClassifier(data.shape[0], data.num_classes).to(device)
    problem = weights_mismatch(net, state["model"])
    if problem is not None:
        raise ValueError(problem)
    if state.get("data_sha256") != digest:  # a file copied or renamed into this name
        raise ValueError("it was trained on other data")
    net.load_state_dict(state["model"])
    return net.eval().requires_grad_(False)


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@torch.no_grad()
def _features(net: FeatureClassifier, x: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    return torch.cat([net.features(x[i:i + batch].to(device).float()).cpu()
                      for i in range(0, len(x), batch)])


def try_fid(samples: torch.Tensor, real_uint8: torch.Tensor) -> tuple[float | None, str]:
    """FID through torchmetrics when its Inception weights can be had; else ``(None, reason)``."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fid = FrechetInceptionDistance(feature=2048)
    except Exception as e:  # not installed, or weights not downloadable offline
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return None, f"FID skipped: Inception weights unavailable ({reason})"

    def rgb(x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    fid.update(rgb(real_uint8), real=True)
    fid.update(rgb((from_model(samples) * 255).round().to(torch.uint8)), real=False)
    return float(fid.compute()), "FID (torchmetrics, Inception-v3 pool3)"


def evaluate_run(run: LoadedRun, *, n: int = 1000, solver: str = "ddim", steps: int | None = 49,
                 n_bpd: int = 256, batch_size: int = 256, seed: int = 0,
                 classifier_steps: int = 1500, device: torch.device | str = "cpu",
                 progress: bool = True, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample ``n`` images, score them (FID if possible, FD-classifier) and measure bits/dim.

    ``options``: the solver's options (a diffusers checkpoint's ``clip_sample``, ...). Data
    without labels has no FD-classifier: the report says why under ``fd_classifier_note`` (and
    a note on stderr). Fewer test images than ``n_bpd``: all are used, ``bpd_n_requested``
    records the request.

    Raises:
        UserInputError: a 2-D run, or samples that are NaN or infinite (checked before they are
            scored).
    """
    if not is_image(run.cfg.data):
        raise UserInputError(NOT_IMAGES)
    train = build_data(run.cfg.data, "train")
    # The classifier (cached, or trained once) comes before sampling, so that a problem with the
    # data or the cache shows up before the long part.
    net = (load_or_train_classifier(train, device=device, steps=classifier_steps)
           if train.y is not None else None)
    gen = generate(run.model, run.sde, n, run.shape, solver, batch_size=batch_size,
                   seed=seed, device=device, progress=progress, steps=steps, **(options or {}))
    if run.codec is not None:  # latents -> images (timed with the sampling)
        start = time.perf_counter()
        x = run.decode(gen.x)
        gen = replace(gen, x=x, seconds=gen.seconds + time.perf_counter() - start,
                      n_nonfinite=count_nonfinite(x))
    if gen.n_nonfinite:
        raise UserInputError(f"{gen.n_nonfinite} of {n} samples are NaN or infinite (the model or "
                             "the solver diverged): no FID or FD-classifier of them; nothing was "
                             "written")
    real = train.x[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]]
    report: dict[str, Any] = {"n_samples": n, "solver": solver, "nfe": gen.nfe,
                              "sample_seconds": gen.seconds}
    report["fid"], report["fid_note"] = try_fid(gen.x, real)
    if net is not None:
        report["fd_classifier"] = frechet_distance(_features(net, gen.x, device),
                                                   _features(net, uint8_to_model(real), device))
    else:
        report["fd_classifier_note"] = (f"FD-classifier skipped: the data ({train.origin}) has "
                                        "no labels to train its classifier on")
        note(report["fd_classifier_note"])
    if n_bpd > 0:
        ll = evaluate_likelihood(run, n=n_bpd, batch_size=min(batch_size, n_bpd), split="test",
                                 seed=seed, device=device, progress=progress)
        if run.codec is not None:  # latent nats/dim, and the image bound where defined
            report.update({k: v for k, v in ll.items() if k.startswith(("latent_nats", "bpd_"))},
                          bpd_n=ll["n"], bpd_nfe=ll["nfe"])
        else:
            report.update(bpd=ll["bpd"], bpd_stderr=ll["bpd_stderr"], bpd_n=ll["n"],
                          bpd_nfe=ll["nfe"])
        if ll["n"] < n_bpd:
            report["bpd_n_requested"] = n_bpd
            note(f"the test split has {ll['n']} images: bits/dim of all {ll['n']}, not "
                 f"--n-bpd {n_bpd}")
    return report


def eval_command(
    ckpt: str | os.PathLike | None, *, data: str | None = None, n: int = 1000,
    solver: str | None = None, steps: int | None = None, n_bpd: int = 256,
    batch_size: int = 256, seed: int = 0, classifier_steps: int = 1500,
    out: str | os.PathLike | None = None, device: str = "auto", progress: bool = True,
    threads: int = 0,
) -> tuple[dict[str, Any], Path]:
    """``sde-gen eval``: :func:`evaluate_run` of the run (on ``data``, default its own), written
    as a JSON report (default ``<run>/eval.json``); returns it and its path.

    ``solver``/``steps`` default to ``ddim`` with 49 intervals, and on a distilled run
    (``sde-gen distill``) to ``consistency`` with the solver's own steps; a distilled run has no
    probability-flow ODE of its own, so its report has no bits/dim (``bpd_note`` says so).

    Raises:
        UserInputError: an unknown solver or a bad output path (before the checkpoint is read), a
            2-D run, an eps-model solver on a distilled run, non-finite samples or scores
            (nothing is written then).
    """
    from .command_run import open_run
    from .distributed import resolve_device
    from .outputs import check_out_path, nonfinite_keys, write_json
    from .runs import with_data
    from .solver_options import check_solver, checkpoint_sampler_defaults

    if solver is not None:
        check_solver(solver)
    if out is not None:
        check_out_path(out, ".json")
    dev = resolve_device(device)
    run = open_run(ckpt, dev, threads, autoencoder_ok=True)
    if not is_image(run.cfg.data):
        raise UserInputError(NOT_IMAGES)
    distilled = getattr(run.model, "is_consistency_model", False)
    if distilled and solver not in (None, "consistency"):
        raise UserInputError(f"{run.workdir} is a distilled consistency model, not an eps-model: "
                             f"--solver {solver} cannot sample it; use --solver consistency (the "
                             "default here)")
    if distilled:
        solver = "consistency"
    else:
        solver, steps = solver or "ddim", 49 if steps is None else steps
    run = with_data(run, data)
    out = check_out_path(out or run.workdir / "eval.json", ".json")
    if run.is_autoencoder:  # a first stage: reconstruction error and its likelihood
        from .latent_report import evaluate_autoencoder

        rep = evaluate_autoencoder(run, n=n, batch_size=batch_size, seed=seed, device=dev)
        return rep, write_json(rep, out)
    rep = evaluate_run(run, n=n, solver=solver, steps=steps,
                       n_bpd=0 if distilled else n_bpd, batch_size=batch_size,
                       seed=seed, classifier_steps=classifier_steps, device=dev,
                       progress=progress, options=checkpoint_sampler_defaults(run, solver, {}))
    if distilled and n_bpd:
        rep["bpd_note"] = ("bits/dim skipped: a consistency model has no probability-flow ODE "
                           "of its own (sde-gen likelihood --ckpt TEACHER gives the teacher's)")
        note(rep["bpd_note"])
    bad = nonfinite_keys(rep, ("fid", "fd_classifier", "bpd"))
    if bad:
        raise UserInputError(f"the evaluation is not finite ({bad}); nothing was written")
    return rep, write_json(rep, out)
