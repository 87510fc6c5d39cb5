"""PyAV primitives shared by the curation stages: decode a frame range, resize, encode mp4.

Frames are numbered in presentation order from 0 (the first frame of the video stream);
every stage and the manifest use these numbers, end exclusive.
"""
from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import numpy as np


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side at most `short_side` (never upscaled), both even.

    Even sizes keep yuv420p encoders happy; aspect ratio is kept to the nearest even pixel.
    """
    scale = 1.0 if not short_side else min(1.0, short_side / min(width, height))
    new_w = max(2, int(round(width * scale / 2)) * 2)
    new_h = max(2, int(round(height * scale / 2)) * 2)
    return new_w, new_h


def frame_to_rgb(frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
    """Decoded frame as an RGB uint8 array (H, W, 3), area-resized to `short_side` by swscale."""
    width, height = scaled_size(frame.width, frame.height, short_side)
    if (width, height) == (frame.width, frame.height):
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()


def iter_decoded(
    path: str, start_pts: int | None = None, seek_pts: int | None = None
) -> Iterator[av.VideoFrame]:
    """Decoded frames of the first video stream in presentation order.

    With `seek_pts`, the demuxer seeks to the keyframe at or before it first; frames with a pts
    below `start_pts` (the ones between that keyframe and the wanted start) are skipped.
    """
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if seek_pts is not None:
            container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if start_pts is not None and frame.pts is not None and frame.pts < start_pts:
                continue
            yield frame


def encode_mp4(frames: Iterable[np.ndarray], fps: float, crf: int = 18, preset: str = "veryfast",
               gop: int | None = None) -> bytes:
    """Encode RGB uint8 frames (all the same even size) as an H.264 mp4, returned as bytes.

    Frames are consumed one at a time, so a generator keeps memory flat for long clips. One
    encoder thread so the bytes do not depend on the machine; parallelism comes from running
    many clips at once.
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("encode_mp4: no frames to encode")
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"encode_mp4: frame size {width}x{height} must be even for yuv420p")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        options = {"crf": str(crf), "preset": preset, "threads": "1"}
        if gop is not None:
            # Fixed keyframe interval, no extra keyframes at scene changes: tests need to know
            # exactly where the keyframes are.
            options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        stream.options = options
        for image in itertools.chain([first], frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()
