"""Dataset-level likelihood report for a trained run: mean NLL, standard errors, true NLL."""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.toy2d import Toy2D
from ..errors import UserInputError
from ..likelihood.bpd import bits_per_dim
from ..likelihood.ode_likelihood import check_solve, log_likelihood
from ..noise import IndexedGenerator, block_size_for
from ..scaling import dequantize
from .distributed import gather_batches, rank_world
from .factory import build_data, is_image
from .runs import LoadedRun

SPLITS = {"train": 0, "test": 1}  # each split draws its own streams (_stream)


def _mean_stderr(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    se = v.std(unbiased=True).item() / math.sqrt(v.numel()) if v.numel() > 1 else float("nan")
    return v.mean().item(), se


def _stream(split: str, use: str) -> int:
    """The random stream of one use (``data``, ``probes``, ``vlb``) on one split: example ``i``
    of a run draws from ``(seed, stream, i)`` alone, so ``--batch-size``, ``--n`` and the number
    of processes do not change what it draws."""
    return 4 * SPLITS[split] + {"data": 1, "probes": 2, "vlb": 3}[use]


def _examples(run: LoadedRun, split: str, n: int, seed: int, *, dequantized: bool):
    """``(data, x)``: the run's dataset and ``n`` examples of the split (images: the first
    ``n``, uniformly dequantized when ``dequantized``, else 8-bit; 2-D: fresh draws), each drawn
    from its own stream."""
    if is_image(run.cfg.data):
        data = build_data(run.cfg.data, split)
        x = data.x[:min(n, len(data))]
        if dequantized:
            gen = IndexedGenerator(seed, 0, len(x), block=block_size_for(x.shape[1:]),
                                   stream=_stream(split, "data"))
            x = dequantize(x, generator=gen, dtype=torch.float32)
        return data, x
    data = build_data(run.cfg.data)
    gen = IndexedGenerator(seed, 0, n, stream=_stream(split, "data"))
    return data, gen.draw(lambda m, g: data.sample(m, generator=g, dtype=torch.float64))


def evaluate_likelihood(
    run: LoadedRun,
    *,
    n: int = 2048,
    batch_size: int = 512,
    split: str = "test",
    trace: str | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 1e-5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Negative log-likelihood of ``n`` examples of the run's dataset under its EMA model.

    2-D data: fresh draws (a split is its own random stream), exact trace by default. For
    Gaussian-mixture datasets the true NLL of the same points and the gap (an estimate of
    ``KL(q || p_theta)``, with its paired standard error) are included. Images: the first ``n``
    images of the split, uniformly dequantized once each, Hutchinson trace by default, plus
    bits/dim (``bpd``).

    Returns:
        A JSON-ready dict with ``nll_nats``, ``nll_stderr``, ``nfe`` (mean per batch),
        ``seconds``, ``n`` and, for mixtures, ``true_nll_nats`` and ``kl_gap_nats``.
    """
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if n < 1 or batch_size < 1:
        raise UserInputError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    check_solve(run.sde, t_min, rtol, atol)  # before any data is built
    if run.codec is not None:  # latent nats per dim, and the image bound where there is one
        from .latent_report import evaluate_latent_likelihood

        return evaluate_latent_likelihood(run, n=n, batch_size=batch_size, split=split,
                                          trace=trace, rtol=rtol, atol=atol, t_min=t_min,
                                          seed=seed, device=device, progress=progress)
    images = is_image(run.cfg.data)
    trace = trace or ("hutchinson" if images else "exact")
    data, x_all = _examples(run, split, n, seed, dequantized=True)
    n = len(x_all)
    mine: dict[int, torch.Tensor] = {}
    start = time.perf_counter()
    # 2-D data: a float64 solve (cheap); images: the network's float32. Never mutates run.model.
    model = run.model if images else copy.deepcopy(run.model).double()
    rank, world = rank_world()  # under torchrun, batch i goes to rank i mod W
    starts = list(range(0, n, batch_size))
    for b in tqdm(range(rank, len(starts), world), desc="likelihood",
                  disable=not progress or rank > 0, unit="batch"):
        x = x_all[starts[b]:starts[b] + batch_size].to(device)
        probes = IndexedGenerator(seed, starts[b], len(x), block=block_size_for(x.shape[1:]),
                                  stream=_stream(split, "probes"), device=device)
        res = log_likelihood(model, run.sde, x, trace=trace, rtol=rtol, atol=atol, t_min=t_min,
                             generator=probes)
        mine[b] = torch.cat([res.logp.cpu(), torch.tensor([float(res.nfe)], dtype=res.logp.dtype)])
    seconds = time.perf_counter() - start
    parts = gather_batches(mine)
    logp = torch.cat([p[:-1] for p in parts])
    nfes = [p[-1].item() for p in parts]
    nll, se = _mean_stderr(-logp)
    report: dict[str, Any] = {
        "split": split, "n": n, "trace": trace, "rtol": rtol, "atol": atol, "t_min": t_min,
        "nll_nats": nll, "nll_stderr": se, "nfe": sum(nfes) / len(nfes), "seconds": seconds,
    }
    if images:
        report["bpd"], report["bpd_stderr"] = _mean_stderr(bits_per_dim(logp, x_all))
    if isinstance(data, Toy2D) and data.has_density:
        true_logp = data.log_prob(x_all)
        report["true_nll_nats"], report["true_nll_stderr"] = _mean_stderr(-true_logp)
        report["kl_gap_nats"], report["kl_gap_stderr"] = _mean_stderr(true_logp - logp)
    return report


def evaluate_vlb(
    run: LoadedRun,
    *,
    n: int = 2048,
    batch_size: int = 512,
    split: str = "test",
    variance: str = "beta",
    n_t: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """DDPM's variational bound ([Ho20] Eq. 5) on the same examples as :func:`evaluate_likelihood`.

    Images are scored as 8-bit data with the discretized decoder (bits/dim directly, no
    dequantization); 2-D data with the continuous decoder. Returns ``vlb_nats``, ``vlb_stderr``,
    the mean terms ``vlb_prior``, ``vlb_diffusion``, ``vlb_decoder``, ``vlb_nfe`` and, for images,
    ``vlb_bpd`` / ``vlb_bpd_stderr``.
    """
    from ..likelihood.vlb import vlb

    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if run.codec is not None:
        raise UserInputError("--method vlb: DDPM's bound with its discretized pixel decoder is "
                             "not defined on a latent run; use --method ode (latent nats/dim and "
                             "the image bits/dim bound)")
    images = is_image(run.cfg.data)
    _, x_all = _examples(run, split, n, seed, dequantized=False)
    n = len(x_all)
    model = copy.deepcopy(run.model).double()  # the bound is accumulated in float64
    parts: dict[str, list[torch.Tensor]] = {"nats": [], "prior": [], "diffusion": [], "decoder": []}
    start, nfe = time.perf_counter(), 0
    for i in tqdm(range(0, n, batch_size), desc="vlb", disable=not progress):
        x = x_all[i:i + batch_size].to(device)
        gen = IndexedGenerator(seed, i, len(x), block=block_size_for(x.shape[1:]),
                               stream=_stream(split, "vlb"), device=device)
        res = vlb(model, run.sde, x, variance=variance, n_t=n_t, generator=gen)
        for k in parts:
            parts[k].append(getattr(res, k).cpu())
        nfe = res.nfe
    cat = {k: torch.cat(v) for k, v in parts.items()}
    rep: dict[str, Any] = {"split": split, "n": n, "vlb_variance": variance, "vlb_n_t": n_t,
                           "vlb_nfe": nfe, "vlb_seconds": time.perf_counter() - start}
    rep["vlb_nats"], rep["vlb_stderr"] = _mean_stderr(cat["nats"])
    for k in ("prior", "diffusion", "decoder"):
        rep[f"vlb_{k}"] = cat[k].mean().item()
    if images:
        d = math.prod(x_all.shape[1:])
        rep["vlb_bpd"], rep["vlb_bpd_stderr"] = (v / (d * math.log(2))
                                                 for v in _mean_stderr(cat["nats"]))
    return rep


METHODS = ("ode", "vlb", "both")
TRACES = ("exact", "hutchinson")
#: The options of each likelihood: those of one are refused with the other alone.
ODE_FLAGS = ("--trace", "--rtol", "--atol", "--t-min")
VLB_FLAGS = ("--variance", "--n-t")


def _check_likelihood_options(method: str, trace: str | None, ode: dict[str, Any],
                              vlb: dict[str, Any]) -> None:
    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; choose ode, vlb or both")
    if trace not in (None, *TRACES):
        raise UserInputError(f"unknown trace {trace!r}; choose exact or hutchinson")
    for given, alone, other in ((ode, "vlb", "ode"), (vlb, "ode", "vlb")):
        flags = [f for f, v in given.items() if v is not None]
        if method == alone and flags:
            verb = "applies" if len(flags) == 1 else "apply"
            raise UserInputError(f"{', '.join(flags)} {verb} to --method {other} or both, not "
                                 f"--method {alone}")


def likelihood_command(
    ckpt: str | os.PathLike | None, *, data: str | None = None, split: str = "test",
    n: int = 2048, batch_size: int = 512, method: str = "ode", trace: str | None = None,
    rtol: float | None = None, atol: float | None = None, t_min: float | None = None,
    variance: str | None = None, n_t: int | None = None, seed: int = 0,
    out: str | os.PathLike | None = None, device: str = "auto", progress: bool = True,
    threads: int = 0,
) -> tuple[dict[str, Any], Path] | None:
    """``sde-gen likelihood``: the ODE likelihood and/or DDPM's bound of ``n`` examples, written
    as a JSON report (default ``<run>/likelihood_<split>.json``); returns it and its path
    (``None`` on the ranks of a torchrun group other than 0).

    ``trace``, ``rtol``, ``atol`` and ``t_min`` (default 1e-5 each) belong to the ODE,
    ``variance`` (default ``beta``) and ``n_t`` to the bound: giving those of the method not
    run is refused. Where the split has fewer than ``n`` examples, all are used, a note says
    so and the report holds ``n`` (used) and ``n_requested``.

    Raises:
        UserInputError: bad options or output path (before the checkpoint is read), or a result
            that is not finite (nothing is written then).
    """
    from ..parameterization import learned_variance_fn
    from .command_run import open_run, process_group
    from .outputs import check_out_path, nonfinite_keys, note, write_json
    from .runs import with_data

    _check_likelihood_options(method, trace, {"--trace": trace, "--rtol": rtol, "--atol": atol,
                                              "--t-min": t_min}, {"--variance": variance,
                                                              "--n-t": n_t})
    if out is not None:  # before any work: a bad path must not cost the whole computation
        check_out_path(out, ".json")
    variance = variance or "beta"
    with process_group(device) as di:
        run = with_data(open_run(ckpt, di.device, threads), data)
        out = check_out_path(out or run.workdir / f"likelihood_{split}.json", ".json")
        if method in ("vlb", "both") and run.codec is not None:
            evaluate_vlb(run)  # its one-line refusal, before the ODE solves
        if method in ("vlb", "both") and variance == "learned":
            learned_variance_fn(run.model)  # fail before the ODE solves, not after
        rep: dict[str, Any] = {"method": method}
        if method in ("ode", "both"):
            rep.update(evaluate_likelihood(
                run, n=n, batch_size=batch_size, split=split, trace=trace,
                rtol=1e-5 if rtol is None else rtol, atol=1e-5 if atol is None else atol,
                t_min=1e-5 if t_min is None else t_min, seed=seed, device=di.device,
                progress=progress))
        if method in ("vlb", "both"):
            rep.update(evaluate_vlb(run, n=n, batch_size=batch_size, split=split,
                                    variance=variance, n_t=n_t, seed=seed, device=di.device,
                                    progress=progress))
        if not di.is_main:
            return None
    bad = nonfinite_keys(rep, ("nll_nats", "bpd", "vlb_nats", "vlb_bpd", "latent_nll_nats",
                               "bpd_bound"))
    if bad:
        raise UserInputError(f"the likelihood is not finite ({bad}): the model or the ODE solve "
                             "diverged; nothing was written")
    if rep["n"] < n:
        rep["n_requested"] = n
        note(f"the {split} split has {rep['n']} examples: all {rep['n']} were used, not --n {n}")
    return rep, write_json(rep, out)
