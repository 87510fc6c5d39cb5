"""Per-video figures: the model cards' offline metrics (svd_fast.train.video_metrics), colour
drift (svd_fast.long_video.drift_report) and, when given, first-frame figures against the input
image and the CLIP score against the prompt."""
from __future__ import annotations

import numpy as np

# JSON field -> (table header, unit); the order of the printed table and of the plot's panels.
FIELDS = {
    "first_frame_psnr": ("first-frame PSNR", "dB"),
    "colour_shift_255": ("first-frame colour shift", "/255"),
    "mean_flow": ("mean flow", "px/frame"),
    "warp_consistency": ("flow-warped PSNR", "dB"),
    "colour_drift_255": ("colour drift", "/255"),
    "clip_score": ("CLIP score", ""),
}


def input_image_like(image_path, video: np.ndarray) -> np.ndarray:
    """The conditioning image at the video's frame size, in [0, 1], resized as the pipeline
    resizes it (svd_fast.conditioner.preprocess_image), so the first frame is compared with what
    the model was given."""
    from svd_fast.conditioner import preprocess_image
    from svd_fast.video_io import load_image

    pixels = preprocess_image(load_image(image_path), video.shape[1], video.shape[2])
    return ((pixels[0].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float64)


def score_video(frames: np.ndarray, image=None, prompt=None, clip=None) -> dict:
    """Figures of one uint8 video (T, H, W, 3); image: the conditioning image's path or None;
    prompt + clip (a ClipScorer): the CLIP score."""
    from svd_fast.long_video import drift_report
    from svd_fast.train import video_metrics

    video = frames.astype(np.float32) / 255.0
    row = {"frames": int(len(frames)), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
           "mean_flow": video_metrics.mean_flow(video),
           "warp_consistency": video_metrics.warp_consistency(video),
           "colour_drift_255": drift_report(video)["mean_colour_drift_255"]}
    if image is not None:
        reference = input_image_like(image, video)
        row["first_frame_psnr"] = video_metrics.first_frame_psnr(video, reference)
        row["colour_shift_255"] = video_metrics.colour_shift(video, reference)
    if prompt is not None and clip is not None:
        row["prompt"] = prompt
        row["clip_score"] = clip(frames, prompt)
    return row


def summarise(rows: dict[str, dict]) -> dict:
    """Mean (finite values) and count of each metric over the videos that have it."""
    summary = {}
    for field in FIELDS:
        values = [r[field] for r in rows.values() if field in r]
        finite = [v for v in values if np.isfinite(v)]
        if values:
            summary[field] = {"mean": float(np.mean(finite)) if finite else float("nan"), "videos": len(values),
                              "infinite": len(values) - len(finite)}
    return summary
