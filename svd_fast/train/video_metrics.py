"""Quality figures of generated videos: does it start from the input, move, and stay consistent?

- first_frame_psnr: PSNR of the first generated frame against the conditioning image;
- mean_flow: mean Farneback optical-flow magnitude between consecutive frames (pixels per frame);
- warp_consistency: PSNR of frame t against frame t+1 warped back along the estimated flow,
  averaged over pairs (temporal consistency: high when the change between frames is motion that
  the flow explains, low for flicker or content popping in and out).
Videos are float arrays (T, H, W, 3) in [0, 1].
"""
from __future__ import annotations

import cv2
import numpy as np

FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=9, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1] (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor((np.clip(frame, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)


def flows(video: np.ndarray) -> list[np.ndarray]:
    """Farneback flow (H, W, 2) from each frame to the next."""
    grey = [_grey(f) for f in video]
    return [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(grey, grey[1:])]


def first_frame_psnr(video: np.ndarray, image: np.ndarray) -> float:
    return psnr(video[0], image)


def mean_flow(video: np.ndarray) -> float:
    fields = flows(video)
    return float(np.mean([np.linalg.norm(f, axis=-1).mean() for f in fields])) if fields else 0.0


def warp_consistency(video: np.ndarray) -> float:
    """Mean PSNR of frame t against frame t+1 sampled at x + flow(x), over in-frame pixels."""
    h, w = video.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    scores = []
    for t, flow in enumerate(flows(video)):
        map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
        warped = cv2.remap(video[t + 1].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR)
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        scores.append(psnr(warped[inside], video[t][inside]) if inside.any() else float("nan"))
    return float(np.nanmean(scores)) if scores else float("inf")


def video_report(video: np.ndarray, image: np.ndarray) -> dict:
    return {"first_frame_psnr": first_frame_psnr(video, image), "mean_flow": mean_flow(video),
            "warp_consistency": warp_consistency(video)}
