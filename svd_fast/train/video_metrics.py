"""Quality figures of generated videos: does it start from the input, move, and stay consistent?

- first_frame_psnr: PSNR of the first generated frame against the conditioning image;
- mean_flow: mean Farneback optical-flow magnitude between consecutive frames (pixels per frame);
- warp_consistency: PSNR of frame t against frame t+1 warped back along the estimated flow,
  averaged over pairs (temporal consistency: high when the change between frames is motion that
  the flow explains, low for flicker or content popping in and out);
- colour_shift: largest |channel mean of the first frame - of the conditioning image| (/255),
  the model cards' colour figure (colour drift over a video: svd_fast.long_video.drift_report).
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


def finite_mean(values) -> float:
    """Mean of the finite values: a PSNR is inf for identical frames. inf when every value is +inf (a
    rendered video's first frame is the input itself), nan when none is finite otherwise."""
    values = list(values)
    finite = [v for v in values if np.isfinite(v)]
    if finite:
        return float(np.mean(finite))
    return float("inf") if values and all(v == np.inf for v in values) else float("nan")


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor((np.clip(frame, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)


def flows(video: np.ndarray) -> list[np.ndarray]:
    """Farneback flow (H, W, 2) from each frame to the next."""
    grey = [_grey(f) for f in video]
    return [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(grey, grey[1:])]


def first_frame_psnr(video: np.ndarray, image: np.ndarray) -> float:
    return psnr(video[0], image)


def colour_shift(video: np.ndarray, image: np.ndarray) -> float:
    """Largest |mean of a colour channel of the first frame - of the image|, in 1/255 units."""
    first, image = np.asarray(video[0], np.float64), np.asarray(image, np.float64)
    return float(np.abs(first.reshape(-1, 3).mean(0) - image.reshape(-1, 3).mean(0)).max() * 255)


def mean_flow(video: np.ndarray) -> float:
    fields = flows(video)
    return float(np.mean([np.linalg.norm(f, axis=-1).mean() for f in fields])) if fields else 0.0


def mean_divergence(video: np.ndarray, margin: float = 0.125) -> float:
    """Mean over frame pairs of du/dx + dv/dy of the affine field fitted (least squares) to the flow
    inside a `margin` border: a zoom by m per frame about any point gives 2 (m - 1). A fit, not
    finite differences, because Farneback's flow is noisy pixel to pixel and unreliable at edges."""
    h, w = video.shape[1:3]
    top, left = int(h * margin), int(w * margin)
    ys, xs = np.mgrid[top:h - top, left:w - left].astype(np.float64)
    design = np.stack([np.ones(xs.size), xs.ravel(), ys.ravel()], axis=1)
    values = []
    for flow in flows(video):
        inner = flow[top:h - top, left:w - left].reshape(-1, 2).astype(np.float64)
        (_, du_dx, _), (_, _, dv_dy) = (np.linalg.lstsq(design, inner[:, i], rcond=None)[0] for i in (0, 1))
        values.append(du_dx + dv_dy)
    return float(np.mean(values)) if values else 0.0


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
