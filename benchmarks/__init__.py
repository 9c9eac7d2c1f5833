"""Benchmarks of sde_gen against its peers (k-diffusion, diffusers); not part of the library.

Every script runs from the repository root as ``python -m benchmarks.NAME``, and as
``python benchmarks/NAME.py`` once the project is installed (``pip install -e .``, which
installs this package next to ``sde_gen``). The peers are optional: ``pip install -e '.[bench]'``.

Shared modules: :mod:`benchmarks.common` (result header, markdown tables, writing
``results/NAME.md``), :mod:`benchmarks.peers` (the optional peer imports, the k-diffusion
denoiser adapter, the diffusers peers, device choice and timing helpers) and
:mod:`benchmarks.quality_common` (training and scoring a 2-D run).
"""
