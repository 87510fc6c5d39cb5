"""Real photographs and footage turned into training source videos.

Two kinds of source video come from real media (svd_fast.real_media fetches the files):
- camera moves over a real photograph (`photo_pan_video`): real texture and colour with a known,
  smooth motion (a pan, a zoom, or none), the way a documentary pans over a still;
- real footage cut into parts of at most `max_seconds` and scaled down (`video_parts`), so a
  training sample decodes a short file, not a 80-second one.
Both are written as mp4 next to the procedural videos and then go through svd_fast.curate like any
other source. Frames are uint8 (H, W, 3) RGB.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class PanSpec:
    """A virtual camera over a photo: a square window that moves and zooms at constant rates."""

    seconds: float
    fps: float
    window: float
    """window side at t = 0, as a fraction of the photo's short side"""
    centre: tuple[float, float]
    """window centre at t = 0 (x, y), as fractions of the photo's width and height"""
    velocity: tuple[float, float]
    """window centre speed (x, y) in window sides per second"""
    zoom: float
    """log change of the window side per second (negative: zoom in)"""


def random_pan_spec(rng: np.random.Generator, still_fraction: float = 0.1, max_speed: float = 0.25,
                    max_zoom: float = 0.25, fps_choices=(6.0, 8.0, 12.0)) -> PanSpec:
    """Mostly pans, some zooms, some both, `still_fraction` without motion."""
    still = rng.random() < still_fraction
    angle = rng.uniform(0, 2 * math.pi)
    speed = 0.0 if still else rng.uniform(0.03, max_speed)
    zoom = 0.0 if still or rng.random() < 0.6 else rng.uniform(-max_zoom, max_zoom)
    return PanSpec(seconds=float(rng.uniform(3.0, 4.5)), fps=float(rng.choice(fps_choices)),
                   window=float(rng.uniform(0.45, 0.8)), centre=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
                   velocity=(speed * math.cos(angle), speed * math.sin(angle)), zoom=zoom)


def photo_pan_video(photo: np.ndarray, spec: PanSpec, size: int) -> list[np.ndarray]:
    """Frames (size x size) of the camera `spec` over `photo`; the window stays inside the photo
    (it slides along an edge it would cross)."""
    h, w = photo.shape[:2]
    short = min(h, w)
    # Pre-shrink so each frame is a mild (at most 2x) bilinear resample: no aliasing from a big
    # photo sampled sparsely.
    shrink = min(1.0, 2.0 * size / (spec.window * short * math.exp(-abs(spec.zoom) * spec.seconds)))
    if shrink < 1.0:
        photo = cv2.resize(photo, (max(1, round(w * shrink)), max(1, round(h * shrink))), interpolation=cv2.INTER_AREA)
        h, w = photo.shape[:2]
        short = min(h, w)
    frames = []
    for t in range(max(2, int(round(spec.seconds * spec.fps)))):
        seconds = t / spec.fps
        side = min(short, spec.window * short * math.exp(spec.zoom * seconds))
        cx = np.clip(spec.centre[0] * w + spec.velocity[0] * side * seconds, side / 2, w - side / 2)
        cy = np.clip(spec.centre[1] * h + spec.velocity[1] * side * seconds, side / 2, h - side / 2)
        scale = size / side
        # Affine map photo -> frame: frame = scale * (photo - (centre - side / 2)), pixel centres aligned.
        matrix = np.float32([[scale, 0, -(cx - side / 2) * scale + 0.5 * scale - 0.5],
                             [0, scale, -(cy - side / 2) * scale + 0.5 * scale - 0.5]])
        frames.append(cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def load_photo(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file (grey and RGBA photos become RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def video_parts(path: Path, short_side: int, max_seconds: float) -> tuple[list[list[np.ndarray]], float]:
    """Frames of a video file scaled to `short_side` (never up), in consecutive parts of at most
    `max_seconds`; and its frame rate. Parts shorter than a second are dropped."""
    from svd_fast.train.data import decode_video

    frames, fps = decode_video(path, str(path))
    h, w = frames.shape[1:3]
    scale = min(1.0, short_side / min(h, w))
    size = (max(2, 2 * round(w * scale / 2)), max(2, 2 * round(h * scale / 2)))  # even sides for h264
    small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    step = max(1, int(round(max_seconds * fps)))
    parts = [small[i : i + step] for i in range(0, len(small), step)]
    return [p for p in parts if len(p) >= fps], fps


def photo_crop_clips(photos: list[torch.Tensor], count: int, frames: int, size: int, window: int,
                     generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """(count, frames, 3, window, window) short pans over random multi-scale crops of `photos`
    ((3, H, W) tensors): a square of 25-100% of a photo's short side is area-resampled to `size`
    px (whole photos at `size` px have that detail density) and a `window` px square slides over
    it by up to `max_shift` px per frame. Small windows make cheap steps at the same density."""
    def uniform(high: int) -> int:
        return int(torch.randint(high, (1,), generator=generator))

    out = []
    for _ in range(count):
        img = photos[uniform(len(photos))]
        h, w = img.shape[1:]
        side = int(min(h, w) * (0.25 + 0.75 * float(torch.rand(1, generator=generator))))
        y, x = uniform(h - side + 1), uniform(w - side + 1)
        crop = F.interpolate(img[None, :, y:y + side, x:x + side].float(), size=(size, size), mode="area")[0]
        room = size - window
        shift = min(max_shift, room // max(1, frames - 1))
        dy, dx = (uniform(2 * shift + 1) - shift for _ in range(2))
        y0 = uniform(room - abs(dy) * (frames - 1) + 1) + max(0, -dy) * (frames - 1)
        x0 = uniform(room - abs(dx) * (frames - 1) + 1) + max(0, -dx) * (frames - 1)
        out.append(torch.stack([crop[:, y0 + t * dy:y0 + t * dy + window, x0 + t * dx:x0 + t * dx + window]
                                for t in range(frames)]))
    return torch.stack(out)
