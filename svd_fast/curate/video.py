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


# High-bit-depth YUV formats and the 8-bit format of the same chroma layout.
EIGHT_BIT_YUV = {"yuv420p10le": "yuv420p", "yuv420p12le": "yuv420p", "yuv422p10le": "yuv422p",
                 "yuv422p12le": "yuv422p", "yuv444p10le": "yuv444p", "yuv444p12le": "yuv444p",
                 "p010le": "yuv420p", "p016le": "yuv420p"}


def frame_to_rgb(frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
    """Decoded frame as an upright RGB uint8 array (H, W, 3), area-resized to `short_side` by swscale.

    Upright: the stream's display matrix (phone videos: rotation metadata, not rotated pixels)
    is applied, as players do. 10/12-bit YUV goes to 8-bit YUV of the same chroma layout first:
    the direct high-bit-depth 4:2:0 -> rgb24 conversion of the swscale bundled with PyAV 18
    misplaces chroma, off by up to ~100 levels near colour edges (measured); this way the colours
    are as exact as for an 8-bit source (tests/curate/test_curate_fuzz.py).
    """
    rotation = int(round((frame.rotation or 0) / 90)) % 4  # quarter turns counterclockwise
    if frame.format.name in EIGHT_BIT_YUV:
        frame = frame.reformat(format=EIGHT_BIT_YUV[frame.format.name])
    width, height = scaled_size(frame.width, frame.height, short_side)
    if (width, height) == (frame.width, frame.height):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, rotation)) if rotation else rgb


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


VFR_TIME_BASE = Fraction(1, 90000)  # the MPEG system clock: exact for every common frame rate


def encode_mp4(frames: Iterable, fps: float, crf: int = 18, preset: str = "veryfast",
               gop: int | None = None, timed: bool = False) -> bytes:
    """Encode RGB uint8 frames (all the same even size) as an H.264 mp4, returned as bytes.

    Frames are consumed one at a time, so a generator keeps memory flat for long clips. One
    encoder thread so the bytes do not depend on the machine; parallelism comes from running
    many clips at once. With `timed`, `frames` yields (image, seconds from the first frame) and
    those times are kept (a variable-frame-rate source keeps its timing); `fps` is then only
    the nominal rate.
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("encode_mp4: no frames to encode")
    height, width = (first[0] if timed else first).shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"encode_mp4: frame size {width}x{height} must be even for yuv420p")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if timed:
            stream.codec_context.time_base = VFR_TIME_BASE
        options = {"crf": str(crf), "preset": preset, "threads": "1"}
        if gop is not None:
            # Fixed keyframe interval, no extra keyframes at scene changes: tests need to know
            # exactly where the keyframes are.
            options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        stream.options = options
        for item in itertools.chain([first], frames):
            image, seconds = item if timed else (item, None)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if timed:
                frame.pts, frame.time_base = int(round(seconds / VFR_TIME_BASE)), VFR_TIME_BASE
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()
