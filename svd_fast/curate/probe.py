"""Stage 1a: probe a source video with PyAV.

Reads every packet of the video stream (no decoding) to learn the exact frame count, the
presentation timestamps and which frames are keyframes, then decodes the first frame to prove
the codec works. Anything wrong raises UnreadableVideo with a short reason for errors.parquet.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction

import av


class UnreadableVideo(Exception):
    """The source cannot be curated; str(error) is the reason recorded in errors.parquet."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    pts: list[int] = field(repr=False)  # presentation timestamps, sorted: frame i has pts[i]
    keyframes: list[int] = field(repr=False)  # frame indices of keyframes, sorted

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _frame_rate(stream, pts: list[int]) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    if len(pts) > 1 and stream.time_base:
        # No declared rate: derive it from the timestamp span.
        return float((len(pts) - 1) / ((pts[-1] - pts[0]) * Fraction(stream.time_base)))
    raise UnreadableVideo("no frame rate")


def probe_video(path: str) -> VideoInfo:
    """VideoInfo of the first video stream of `path`, or UnreadableVideo(reason)."""
    try:
        size = os.path.getsize(path)
    except OSError as error:  # e.g. a symbolic link to nothing
        raise UnreadableVideo(f"unreadable: {error.strerror}") from None
    if size == 0:
        raise UnreadableVideo("empty file")
    try:
        with av.open(path) as container:
            if not container.streams:
                raise UnreadableVideo("unreadable: no streams found (truncated, or not a video file)")
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams})
                raise UnreadableVideo(f"no video stream (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            stamps: list[tuple[int, bool]] = []
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                if stamp is None:
                    raise UnreadableVideo("video packets carry no timestamps")
                stamps.append((stamp, packet.is_keyframe))
            if not stamps:
                raise UnreadableVideo("no video frames")
            stamps.sort()
            pts = [stamp for stamp, _ in stamps]
            keyframes = [index for index, (_, key) in enumerate(stamps) if key]
            fps = _frame_rate(stream, pts)
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
        with av.open(path) as container:
            first = next(container.decode(video=0), None)
            if first is None:
                raise UnreadableVideo("no decodable frame")
            if round((first.rotation or 0) / 90) % 2:
                width, height = height, width  # a display matrix turns it a quarter: the upright size
    except UnreadableVideo:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        # strerror leaves out the file name, which errors.parquet already has.
        raise UnreadableVideo(f"unreadable ({type(error).__name__}): {getattr(error, 'strerror', None) or error}") from None
    if width <= 0 or height <= 0:
        raise UnreadableVideo(f"invalid frame size {width}x{height}")
    if len(pts) == 1:
        raise UnreadableVideo(f"a single frame (a still {codec} image, not a video)")
    return VideoInfo(len(pts), fps, width, height, codec, pts, keyframes)
