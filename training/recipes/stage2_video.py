"""Stage II, video pretraining on curated clips: 14 frames at 320x576, all layers train.

Data: the curation pipeline's webdataset shards (`python -m svd_fast.curate`), or a folder of
videos. Noise: ln sigma ~ N(0, 1.2^2), the paper's shift to higher noise at 320x576 (D.2; its
P_std there is not published). Starts from stage I's EMA-less final weights.

    SVD_COMPONENTS=/models/svd SVD_DATA=/data/shards \
        torchrun --nproc_per_node=8 -m svd_fast.train --recipe training/recipes/stage2_video.py \
        --deepspeed training/ds/zero3.json
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
        name="svd-stage2-video",
        output_dir=_paths.runs("stage2"),
        model=SVDConfig.from_name("svd"),
        components=_paths.components(),
        init_from=_paths.runs("stage1"),
        init_weights="model",
        data=DataConfig(**_paths.data_source(), num_frames=14, height=320, width=576, frame_strides=(1, 2, 3),
                        image_fraction=0.0, num_workers=4),
        objective=ObjectiveConfig(p_mean=0.0, p_std=1.2),
        optim=OptimConfig(lr=1e-4, warmup_steps=1000),
        trainable="full",
        batch_size=2,
        grad_accum=4,
        max_steps=100_000,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        ema_decay=0.9999,
        checkpoint_every=1000,
    )
