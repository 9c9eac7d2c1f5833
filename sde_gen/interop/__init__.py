"""Interoperability with other diffusion libraries' checkpoints and models.

- :func:`load_diffusers`: a local diffusers DDPM/DDIM pipeline folder as ``(model, sde)``, or a
  flow-matching one as ``(model, FlowSDE)`` (:mod:`.diffusers_flow`; needs the ``diffusers``
  extra only when called).
- :class:`KarrasDenoiser`, :func:`from_denoiser`: k-diffusion's denoiser convention
  (:mod:`.k_diffusion`), imported on first use.
"""

from __future__ import annotations

from typing import Any

from .diffusers import load_diffusers

__all__ = ["KarrasDenoiser", "from_denoiser", "load_diffusers"]

_LAZY = {"KarrasDenoiser": ".k_diffusion", "from_denoiser": ".k_diffusion"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
