"""Stage 1b: decode one clip once and keep only the frames the scoring stages need.

- key frames: first, middle and last frame (OCR and CLIP, as in the paper);
- motion frames: sampled at the motion rate (2 fps) and shrunk to a 16 px short side;
- caption frames: a few frames spread evenly over the clip for the video captioners.

Frames travel between Ray stages as .npy bytes (`pack` / `unpack`), which Arrow stores as a
plain binary column whatever the frame size.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .config import DecodeConfig, MotionConfig
from .video import frame_to_rgb, iter_decoded


@dataclass
class ClipFrames:
    key: np.ndarray  # (3, H, W, 3) uint8: first, middle, last
    motion: np.ndarray  # (K, h, w, 3) uint8 at the motion rate
    caption: np.ndarray  # (N, H', W', 3) uint8 evenly spread


def key_indices(start: int, end: int) -> list[int]:
    return [start, start + (end - start) // 2, end - 1]


def motion_indices(start: int, end: int, fps: float, motion_fps: float) -> list[int]:
    """Frames at `motion_fps`; at least the first and last frame when the clip has two."""
    step = max(1.0, fps / motion_fps)
    indices = sorted({int(round(start + k * step)) for k in range(int((end - 1 - start) / step) + 1)})
    if len(indices) < 2 and end - start >= 2:
        indices = [start, end - 1]
    return indices


def caption_indices(start: int, end: int, count: int) -> list[int]:
    return sorted({int(round(i)) for i in np.linspace(start, end - 1, num=max(1, count))})


def decode_clip(path: str, start: int, end: int, start_pts: int, decode: DecodeConfig,
                motion: MotionConfig, fps: float) -> ClipFrames:
    """Decode frames [start, end) of `path` (frame `start` has presentation time `start_pts`)."""
    wanted_key = key_indices(start, end)
    wanted_motion = set(motion_indices(start, end, fps, motion.fps))
    wanted_caption = set(caption_indices(start, end, decode.caption_frames))
    key, moving, caption = {}, [], []
    index = start
    for frame in iter_decoded(path, start_pts=start_pts, seek_pts=start_pts):
        if index >= end:
            break
        if index in wanted_key:
            key[index] = frame_to_rgb(frame, decode.key_frame_short_side)
        if index in wanted_motion:
            moving.append(frame_to_rgb(frame, motion.short_side))
        if index in wanted_caption:
            caption.append(frame_to_rgb(frame, decode.caption_short_side))
        index += 1
    if index < end:
        raise ValueError(f"{path}: decoding stopped at frame {index}, before the clip end {end}")
    return ClipFrames(np.stack([key[i] for i in wanted_key]), np.stack(moving), np.stack(caption))


def pack(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack(payload: bytes) -> np.ndarray:
    return np.load(io.BytesIO(payload), allow_pickle=False)
