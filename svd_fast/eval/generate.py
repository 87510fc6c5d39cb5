"""`--model M --images DIR --seeds N`: sample N videos per image with SVDPipeline at the model's
own sampling defaults and keep them for evaluation (and as .mp4 files to look at)."""
from __future__ import annotations

from pathlib import Path

import torch

from svd_fast.eval.inputs import Video


def sample_videos(model, images: dict[str, Path], seeds: int, out_dir, steps: int | None = None,
                  device="cpu") -> list[Video]:
    """One video per (image, seed) named `<image stem>_seed<k>`; the frames evaluated are the
    pipeline's own uint8 output (the .mp4 written next to them is lossy)."""
    from svd_fast.eval.features import model_path
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.video_io import load_image, save_video, to_uint8

    pipe = SVDPipeline.from_pretrained(model_path(model), torch_dtype=torch.float32, device=device)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.config
    videos = []
    for stem, path in images.items():
        image = load_image(path)
        for seed in range(seeds):
            settings = {**pipe.saved_sampling(), **({"num_inference_steps": steps} if steps else {})}
            frames = pipe(image, height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, fps=cfg.fps,
                          motion_bucket_id=cfg.motion_bucket_id, generator=torch.Generator("cpu").manual_seed(seed),
                          output_type="np", **settings).frames[0]
            frames = to_uint8(frames)
            target = Path(out_dir) / f"{stem}_seed{seed}.mp4"
            save_video(frames, target, fps=cfg.fps)
            videos.append(Video(f"{stem}_seed{seed}", target, frames, float(cfg.fps)))
            print(f"sampled {target.name}", flush=True)
    return videos
