"""Shared set-up of the training tests: a tiny recipe (tiny UNet, 16x16 frames) and subprocess env."""
import dataclasses
import os
import sys
from pathlib import Path

import pytest

from svd_fast.train.data import DataConfig
from svd_fast.train.recipe import OptimConfig, Recipe

REPO = Path(__file__).resolve().parents[2]


def make_recipe(output_dir, **changes) -> Recipe:
    """4 frames of 16x16 pixels (8x8 latents with the tiny preset's 2x VAE), batch 2, plain AdamW."""
    recipe = Recipe(
        name="test", output_dir=str(output_dir),
        data=DataConfig(num_frames=4, height=16, width=16, num_samples=64),
        optim=OptimConfig(lr=1e-3), batch_size=2, max_steps=4, checkpoint_every=100, log_every=1,
        export_final=False,
    )
    return dataclasses.replace(recipe, **changes)


@pytest.fixture
def tiny_recipe(tmp_path):
    return lambda **changes: make_recipe(tmp_path / "run", **changes)


def subprocess_env(**extra) -> dict:
    """Environment for `python -m svd_fast.train` children: CPU DeepSpeed, the repo's op cache."""
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def write_recipe_file(path: Path, output_dir, **changes) -> Path:
    """A recipe file for subprocess runs: make_recipe with these changes (reprs must round-trip)."""
    args = ", ".join(f"{k}={v!r}" for k, v in changes.items())
    path.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from conftest import make_recipe\n"
        f"def recipe():\n    return make_recipe({str(output_dir)!r}{', ' if args else ''}{args})\n"
    )
    return path


PYTHON = sys.executable
