"""Shared pytest configuration: single-threaded torch and the ``gpu`` marker's auto-skip."""

from __future__ import annotations

import pytest
import torch

# The CI machine has 2 cores; intra-op threading only adds contention in these small tests.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test marked ``gpu`` when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
