"""The text options of the commands that run a Stable Diffusion folder (``--prompt``,
``--negative-prompt``, ``--guidance``, ``--height``, ``--width``): checked, then bound to the run.

A bound run is an ordinary latent run: its ``model`` is the prompt-guided eps-model
(:class:`~sde_gen.interop.stable_diffusion.PromptModel`, the prompts encoded once) and its
``codec`` the VAE at the asked size, so ``sample``, ``optimize-grid``, ``calibrate``,
``restore`` and ``inpaint`` run it with the code they run every latent model with. The UNet is
shared, never copied.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import UserInputError
from .runs import LoadedRun

__all__ = ["bind_prompt", "check_text_options", "describe"]


def check_text_options(prompt: str | list[str] | None, negative_prompt: str | None,
                       height: int | None, width: int | None,
                       excluded: dict[str, Any] | None = None) -> bool:
    """Whether the text options are in use; checked against the flags they exclude
    (``excluded``: flag -> value, ``None`` where not given).

    Raises:
        UserInputError: ``--negative-prompt``, ``--height`` or ``--width`` without ``--prompt``,
            or ``--prompt`` with an excluded flag.
    """
    if prompt is None or (isinstance(prompt, list) and not prompt):
        given = [f for f, v in (("--negative-prompt", negative_prompt), ("--height", height),
                                ("--width", width)) if v is not None]
        if given:
            raise UserInputError(f"{', '.join(given)} need --prompt TEXT (a Stable Diffusion "
                                 "folder)")
        return False
    clash = [flag for flag, v in (excluded or {}).items() if v is not None]
    if clash:
        raise UserInputError(f"--prompt does not combine with {clash[0]}")
    return True


def bind_prompt(run: LoadedRun, prompt: str | list[str] | None, *,
                negative_prompt: str | None = None, guidance: float | None = None,
                height: int | None = None, width: int | None = None) -> LoadedRun:
    """``run`` with the prompt bound: for a Stable Diffusion folder, the VAE at
    ``height x width`` and ``model`` the guided eps-model of ``prompt`` (a list: row ``j`` gets
    prompt ``j mod P``); every other run unchanged.

    Raises:
        UserInputError: a prompt for a model that takes none, a Stable Diffusion folder without
            one, or a size that is not a multiple of the VAE factor times the UNet's
            downsampling.
    """
    text = prompt is not None and not (isinstance(prompt, list) and not prompt)
    if run.text is None:
        if text:
            raise UserInputError("--prompt needs a text-conditional model (a Stable Diffusion "
                                 "pipeline folder); this model takes no prompt")
        return run
    if not text:
        raise UserInputError(f"{run.workdir} is a Stable Diffusion folder: give --prompt TEXT "
                             "(--prompt '' for the unconditional model)")
    codec = run.text.codec(height, width)
    model = run.text.guided(prompt, negative_prompt=negative_prompt, guidance=guidance or 0.0)
    return replace(run, codec=codec, image_shape=codec.image_shape, model=model)


def describe(prompt: str | list[str], guidance: float | None) -> str:
    """``", prompt 'a cat', guidance 2.5"`` for the commands' summary lines."""
    shown = repr(prompt) if isinstance(prompt, str) else (
        repr(prompt[0]) if len(prompt) == 1 else f"{len(prompt)} prompts")
    return f", prompt {shown}" + (f", guidance {guidance:g}" if guidance else "")
