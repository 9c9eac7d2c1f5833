"""The ``sde-gen`` command line: parse, build, call one library function, report.

Every expected failure (bad config, missing file, unreadable checkpoint) prints one line
``error: ...`` to stderr and exits with code 2; no tracebacks.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from .checkpoint import CheckpointError
from .config import ConfigError, load_config

app = typer.Typer(
    name="sde-gen",
    help="Score-based generative modelling with SDEs: train, sample and evaluate diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXPECTED_ERRORS = (ConfigError, CheckpointError, ValueError, FileNotFoundError, PermissionError)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def one_line_errors(fn: Callable) -> Callable:
    """Turn expected exceptions into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EXPECTED_ERRORS as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


SDE_CHOICES = ("vp", "subvp", "ve")


@app.command()
@one_line_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (default: built-in 2-D toy config)."),
    sde: Optional[str] = typer.Option(None, "--sde", help="Forward SDE: vp, subvp or ve (overrides sde.name)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w", help="Run directory (default: runs/<data>_<sde>). Resumes from its latest checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Random seed (overrides train.seed)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: --set train.steps=500 (repeatable)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a score model by denoising score matching."""
    if sde is not None and sde not in SDE_CHOICES:
        fail(f"unknown SDE {sde!r}; choose one of {', '.join(SDE_CHOICES)}")
    sections: dict = {}
    if sde is not None:
        sections["sde"] = {"name": sde}
    if seed is not None:
        sections["train"] = {"seed": seed}
    cfg = load_config(config, set_, **sections)
    from .train import train as run_training

    workdir = workdir or Path("runs") / f"{cfg.data.name}_{cfg.sde.name}"
    result = run_training(cfg, workdir, progress=progress)
    typer.echo(f"step {result.step}: loss {result.loss:.4f}")
    typer.echo(f"checkpoint: {result.checkpoint}")
    if result.plot is not None:
        typer.echo(f"plot: {result.plot}")


@app.command("show-config")
@one_line_errors
def show_config(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
) -> None:
    """Print the resolved configuration as YAML."""
    import yaml

    from .config import to_dict

    typer.echo(yaml.safe_dump(to_dict(load_config(config, set_)), sort_keys=False).rstrip())


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
