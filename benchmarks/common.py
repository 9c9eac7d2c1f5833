"""Shared benchmark plumbing: device/version header and writing a markdown result file."""

from __future__ import annotations

import datetime
import math
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: While a dict (:func:`recording`), every :func:`mean_l2` call stores ``mean -> (per-draw
#: distances, samples)`` in it: ``benchmarks/calibrated.py`` reads a peer's draws back by the
#: error it reported (the paired bootstrap, the digits' FD-classifier).
RECORDED: dict[float, tuple[torch.Tensor, torch.Tensor]] | None = None


def recording() -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Start recording :func:`mean_l2`'s draws afresh; returns the record."""
    global RECORDED
    RECORDED = {}
    return RECORDED


def mean_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean L2 distance of the rows of ``x`` to ``ref`` (``inf`` where not finite)."""
    e = (x.to(ref.dtype) - ref).reshape(x.shape[0], -1).norm(dim=1)
    m = float(e.mean())
    m = m if math.isfinite(m) else math.inf
    if RECORDED is not None:
        RECORDED[m] = (e, x.detach())
    return m


def paired_ratio_ci(a: torch.Tensor, b: torch.Tensor, level: float = 0.9,
                    resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of ``mean(a) / mean(b)`` over draws resampled in pairs
    (``a`` and ``b``: per-draw errors of two methods from the same draws)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(a), (resamples, len(a)), generator=g)
    r = (a.double()[idx].mean(1) / b.double()[idx].mean(1)).sort().values
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return float(r[int(lo * (resamples - 1))]), float(r[int(hi * (resamples - 1))])


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} thread(s))"


def command() -> str:
    """The command line that ran, with a benchmark script named as ``-m benchmarks.NAME``."""
    argv = list(sys.argv)
    script = Path(argv[0]).resolve() if argv and argv[0].endswith(".py") else None
    if script is not None and script.parent == Path(__file__).resolve().parent:
        argv[0] = f"-m benchmarks.{script.stem}"
    return " ".join(argv)


def header(title: str, device: torch.device | str = "cpu") -> str:
    return (
        f"# {title}\n\n"
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
        f"- device: {device_name(device)}\n"
        f"- torch {torch.__version__}, Python {platform.python_version()}\n"
        f"- command: `python {command()}`\n"
    )


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` (dicts) in ``columns`` order."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v).replace("|", "\\|")  # a cell's own bar, not a column break

    lines = ["| " + " | ".join(fmt(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(f"\nwritten: {path}")
    return path
