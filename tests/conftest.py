"""Shared test set-up: deterministic, small, CPU only."""
import os
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU here: Triton kernels run in the interpreter
# Kernel choices and inductor's compiled code go to a per-run folder, not the user's ~/.cache.
os.environ.setdefault("SVD_FAST_CACHE_DIR", tempfile.mkdtemp(prefix="svd_fast_test_cache_"))

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std): zero-initialised output convs would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module
