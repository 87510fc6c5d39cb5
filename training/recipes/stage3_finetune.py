"""Stage III, high-quality fine-tuning at 576x1024 (SVD: 14 frames; SVD-XT: set model/num_frames to 25).

Noise shifted up again for the higher resolution: ln sigma ~ N(1.0, 1.6^2) (paper D.4, the
image-to-video high-resolution stage); learning rate 3e-5; EMA 0.9999. Check the memory first:

    python -m svd_fast.train --estimate-memory --recipe training/recipes/stage3_finetune.py \
        --deepspeed training/ds/zero3.json --world-size 8
    SVD_COMPONENTS=/models/svd SVD_DATA=/data/hq_shards \
        torchrun --nproc_per_node=8 -m svd_fast.train --recipe training/recipes/stage3_finetune.py \
        --deepspeed training/ds/zero3.json

SVD-XT: --set model.unet.num_frames=25 data.num_frames=25 (and SVD_COMPONENTS pointing at SVD-XT).
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
        name="svd-stage3-finetune",
        output_dir=_paths.runs("stage3"),
        model=SVDConfig.from_name("svd"),
        components=_paths.components(),
        init_from=_paths.runs("stage2"),
        init_weights="ema",
        data=DataConfig(**_paths.data_source(), num_frames=14, height=576, width=1024, frame_strides=(1, 2),
                        num_workers=4),
        objective=ObjectiveConfig(p_mean=1.0, p_std=1.6),
        optim=OptimConfig(lr=3e-5, warmup_steps=500),
        trainable="full",
        batch_size=1,
        grad_accum=8,
        max_steps=50_000,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        ema_decay=0.9999,
        checkpoint_every=500,
    )
