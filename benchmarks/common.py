"""Shared benchmark plumbing: device/version header and writing a markdown result file."""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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
