"""Training data: procedural videos with exact flow, video folders, webdataset shards, bad clips, plans."""
import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svd_fast.curate.video import encode_mp4
from svd_fast.train.data import BatchPlan, DataConfig, build_dataset, estimate_motion, motion_bucket
from svd_fast.train.procedural import random_clip_spec, render_clip


def _warp_error(frames, flow):
    """Mean |frame_t - frame_{t+1}(x + flow)| over pixels whose target stays inside the frame."""
    t, _, h, w = frames.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    errors, still = [], []
    for i in range(t - 1):
        gx, gy = (xs + flow[i, 0]) / w * 2 - 1, (ys + flow[i, 1]) / h * 2 - 1
        inside = (gx.abs() < 0.95) & (gy.abs() < 0.95)
        warped = F.grid_sample(frames[i + 1 : i + 2], torch.stack([gx, gy], -1)[None], align_corners=False)[0]
        errors.append((warped - frames[i]).abs()[:, inside].mean())
        still.append((frames[i + 1] - frames[i]).abs()[:, inside].mean())
    return float(torch.stack(errors).mean()), float(torch.stack(still).mean())


@pytest.mark.parametrize("seed", [1, 2, 6])
def test_procedural_flow_is_the_true_motion(seed):
    """Moving frame t+1 back along the returned flow reproduces frame t (up to resampling and
    occlusions), far better than assuming no motion; Farneback agrees with the flow's magnitude."""
    frames, flow = render_clip(random_clip_spec(seed), 6, 48, 48)
    warped, still = _warp_error(frames, flow)
    assert flow.norm(dim=1).mean() > 0.5, "the clip should move"
    assert warped < 0.5 * still, (warped, still)
    truth = float(flow.norm(dim=1).mean())
    assert abs(estimate_motion(frames) - truth) < 0.4 * truth


def test_procedural_clip_is_deterministic_and_static_clips_exist():
    a, _ = render_clip(random_clip_spec(4), 3, 16, 24)
    b, _ = render_clip(random_clip_spec(4), 3, 16, 24)
    assert torch.equal(a, b) and a.shape == (3, 3, 16, 24) and a.min() >= -1 and a.max() <= 1
    static = [s for s in range(60) if render_clip(random_clip_spec(s), 2, 8, 8)[1].abs().max() < 1e-6]
    assert static, "about 10% of clips are static"


def test_motion_bucket_scale():
    assert motion_bucket(0.0, 64) == 0
    assert motion_bucket(0.05 * 64, 64) == 255 and motion_bucket(100.0, 64) == 255
    assert motion_bucket(0.025 * 64, 64) == 128


def _panning_video(frames=10, size=32, speed=2):
    """A smooth random texture seen through a window sliding `speed` pixels right per frame."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 8, 8 + frames))).float()
    texture = F.interpolate(coarse, size=(size, size + speed * frames), mode="bicubic", align_corners=False)
    texture = texture.clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()
    return [np.ascontiguousarray(texture[:, speed * t : speed * t + size]) for t in range(frames)]


def _write_shard(path, samples: dict):
    with tarfile.open(path, "w") as tar:
        for name, payload in samples.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_folder_and_shards_read_clips_and_skip_bad_ones(tmp_path, caplog):
    good = encode_mp4(_panning_video(), fps=12, crf=10)
    short = encode_mp4(_panning_video(frames=2), fps=12)
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a_good.mp4").write_bytes(good)
    (folder / "b_corrupt.mp4").write_bytes(b"not a video at all")
    (folder / "c_short.mp4").write_bytes(short)
    _write_shard(tmp_path / "shard-000000.tar", {
        "k1.mp4": good, "k1.json": json.dumps({"fps": 24.0}).encode(),
        "k2.mp4": b"\x00" * 64, "k2.json": b"{}",
    })
    config = dict(num_frames=4, height=32, width=32, frame_strides=(2,))
    with caplog.at_level(logging.WARNING, logger="svd_fast.train"):
        for source, path in (("folder", folder), ("shards", tmp_path)):
            dataset = build_dataset(DataConfig(source=source, path=str(path), **config))
            for index in range(len(dataset)):
                sample = dataset[(index, 7)]
                assert sample["frames"].shape == (4, 3, 32, 32)
                # the good clip: every other source frame, so the view moves 4 px per returned frame
                assert sample["fps"] == (6.0 if source == "folder" else 12.0)
                assert 3.0 < sample["motion"] < 5.0, sample["motion"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "b_corrupt.mp4" in messages and "cannot decode" in messages
    assert "c_short.mp4" in messages and "2 frames" in messages
    assert "k2.mp4" in messages


def test_batch_plan_is_independent_of_world_size_and_resumable():
    def items(world, accum, batch, steps, start=0):
        seen = []
        for rank in range(world):
            plan = BatchPlan(dataset_size=10, batch_size=batch, grad_accum=accum, world_size=world, rank=rank, seed=3)
            gen = plan.micro_batches(start)
            seen += [(step, item) for step, _, chunk in (next(gen) for _ in range((steps - start) * accum)) for item in chunk]
        return sorted(seen)

    single = items(world=1, accum=1, batch=4, steps=5)
    assert single == items(world=2, accum=1, batch=2, steps=5) == items(world=2, accum=2, batch=1, steps=5)
    assert items(world=1, accum=1, batch=4, steps=5, start=3) == [x for x in single if x[0] >= 3]
    plan = BatchPlan(dataset_size=10, batch_size=4, grad_accum=1, world_size=1, rank=0, seed=3)
    for epoch in range(2):
        indices = [plan.item(p)[0] for p in range(10 * epoch, 10 * epoch + 10)]
        assert sorted(indices) == list(range(10)), "each epoch visits every clip once"
