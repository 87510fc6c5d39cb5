"""Kernel tests: every output NaN-prefilled, implementations picked per test."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU: Triton kernels run in the interpreter
# Deterministic mode (below) refuses cuBLAS matmuls on a GPU unless cuBLAS keeps a fixed workspace.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest
import torch


@pytest.fixture(autouse=True)
def nan_prefilled_outputs():
    """torch.empty / at::empty return NaN-filled memory, so an element a kernel forgets to write fails."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory and torch.empty(4).isnan().all()
    yield
    torch.use_deterministic_algorithms(previous)
