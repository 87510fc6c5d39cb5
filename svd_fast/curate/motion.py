"""Stage 3: motion score, the paper's static-clip filter.

Dense Farneback optical flow (OpenCV) between consecutive frames sampled at 2 fps and shrunk to
a 16 px short side, averaged over space and time: the mean flow magnitude, in pixels of the
shrunken frame per sampling interval.
"""
from __future__ import annotations

import cv2
import numpy as np

# Farneback settings for frames of ~16x28 pixels: two pyramid levels (the coarsest is 4 px
# high) and a small window so a square a few pixels wide still registers.
FARNEBACK = dict(pyr_scale=0.5, levels=2, winsize=5, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def motion_score(frames: np.ndarray) -> float:
    """Mean optical-flow magnitude over (K, h, w, 3) uint8 RGB frames; 0 for fewer than two."""
    if len(frames) < 2:
        return 0.0
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    magnitudes = []
    for previous, current in zip(grey, grey[1:]):
        flow = cv2.calcOpticalFlowFarneback(previous, current, None, **FARNEBACK)
        magnitudes.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return float(np.mean(magnitudes))
