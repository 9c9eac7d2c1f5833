"""The command line's shared options (issue 23): each declared once in
``sde_gen/app/cli_options.py`` and the same (name, help, range) in every command that takes it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from sde_gen.app.cli import app

APP = Path(__file__).resolve().parents[1] / "sde_gen" / "app"
SHARED = ("--ckpt", "--device", "--seed", "--threads", "--progress/--no-progress",
          "--denoise/--no-denoise", "--guidance")
#: The commands that run a trained model: each takes these shared options.
RUN_COMMANDS = ("sample", "likelihood", "eval", "figures", "optimize-grid", "inpaint",
                "colorize")


def _commands() -> dict:
    return typer.main.get_command(app).commands


@pytest.mark.parametrize("decl", SHARED)
def test_a_shared_option_is_declared_once(decl):
    sources = {p.name: p.read_text() for p in APP.glob("*.py")}
    hits = {name: len(re.findall(rf'"{re.escape(decl)}"', text))
            for name, text in sources.items()}
    assert {k: v for k, v in hits.items() if v} == {"cli_options.py": 1}


@pytest.mark.parametrize("opt", ["--ckpt", "--device", "--seed", "--threads"])
def test_a_shared_option_is_the_same_in_every_command(opt):
    seen = {}
    for name, command in _commands().items():
        for p in command.params:
            if opt in p.opts:
                seen[name] = (p.help, p.min, p.max)
    assert set(RUN_COMMANDS) <= set(seen), f"{opt} missing from {set(RUN_COMMANDS) - set(seen)}"
    assert len(set(seen.values())) == 1, seen


def test_seed_range_is_every_torch_seed_with_room_for_offsets():
    for name, command in _commands().items():
        for p in command.params:
            if "--seed" in p.opts:
                assert (p.min, p.max) == (0, 2**63 - 1), name
