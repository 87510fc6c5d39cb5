"""Stage I, image pretraining: the spatial layers learn on single frames at 256x384.

Every sample is a set of stills (frame 0 of a clip and three other frames in random order) with
image_only_indicator = 1, so the AlphaBlenders take the spatial path only and the temporal layers
are bypassed exactly; only spatial weights train. Noise as the paper's EDM image fine-tune
(P_mean -1.2, P_std 1.0, App. D.2).

    SVD_COMPONENTS=/models/svd SVD_DATA=/data/shards \
        python -m svd_fast.train --recipe training/recipes/stage1_image.py --deepspeed training/ds/zero2.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _paths  # noqa: E402

from svd_fast.config import SVDConfig  # noqa: E402
from svd_fast.train.data import DataConfig  # noqa: E402
from svd_fast.train.objective import ObjectiveConfig  # noqa: E402
from svd_fast.train.recipe import OptimConfig, Recipe  # noqa: E402


def recipe() -> Recipe:
    return Recipe(
        name="svd-stage1-image",
        output_dir=_paths.runs("stage1"),
        model=SVDConfig.from_name("svd"),
        components=_paths.components(),
        init_from=_paths.init_weights(),
        init_weights="model",
        data=DataConfig(**_paths.data_source(), num_frames=4, height=256, width=384, image_fraction=1.0, num_workers=4),
        objective=ObjectiveConfig(p_mean=-1.2, p_std=1.0),
        optim=OptimConfig(lr=1e-4, warmup_steps=1000),
        trainable="spatial",
        batch_size=16,
        max_steps=30_000,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        checkpoint_every=1000,
    )
