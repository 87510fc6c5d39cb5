"""Webdataset tar shards of the kept clips: `<key>.mp4` + `<key>.json` per clip (stdlib tarfile).

Clips are re-encoded (H.264, short side capped) rather than stream-copied: with B-frames a
stream copy cannot end exactly on the clip's last frame, and the training code wants exactly the
manifest's frames. Shard i holds kept clips [i*n, (i+1)*n) in manifest order; a shard is written
to a temporary file and renamed when complete, so an existing shard whose member names match
the plan is finished work.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator

from .video import encode_mp4, frame_to_rgb, iter_decoded

SHARD_PATTERN = "shard-{:06d}.tar"
METADATA_COLUMNS = ["source", "start_frame", "end_frame", "fps", "width", "height", "motion", "text_area",
                    "aesthetic", "clip_score", "caption", "caption_image", "caption_video", "caption_summary"]


def clip_key(source: str, start_frame: int) -> str:
    """Readable, unique webdataset key (no dots: webdataset splits keys from extensions at the first dot)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(source)[0])[-48:]
    digest = hashlib.sha1(source.encode()).hexdigest()[:8]
    return f"{stem}-{digest}-{start_frame:07d}"


def clip_metadata(row: dict) -> dict:
    """The json member: where the clip comes from, its scores and captions (NaN becomes null)."""
    meta = {}
    for name in METADATA_COLUMNS:
        value = row[name]
        if hasattr(value, "item"):
            value = value.item()  # numpy scalar -> Python
        meta[name] = None if isinstance(value, float) and value != value else value
    return meta


def encode_clip(source_path: str, start_frame: int, end_frame: int, start_pts: int, fps: float,
                short_side: int, crf: int) -> bytes:
    """Frames [start_frame, end_frame) of the source as an mp4 (streamed: one frame in memory),
    each at its source time from the clip start: variable frame rates keep their timing."""
    def frames() -> Iterator:
        for count, frame in enumerate(iter_decoded(source_path, start_pts=start_pts, seek_pts=start_pts)):
            if count >= end_frame - start_frame:
                return
            seconds = float((frame.pts - start_pts) * frame.time_base) if frame.pts is not None else count / fps
            yield frame_to_rgb(frame, short_side), seconds

    return encode_mp4(frames(), fps, crf=crf, timed=True)


def shard_is_complete(path: str, keys: list[str]) -> bool:
    """True when `path` exists and holds exactly the planned members."""
    if not os.path.exists(path):
        return False
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except tarfile.TarError:
        return False
    return names == [f"{key}.{ext}" for key in keys for ext in ("mp4", "json")]


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # fixed mtime: same clips, same bytes
    tar.addfile(info, io.BytesIO(payload))


class ShardWriter:
    """Writes one shard member by member into a temporary file; `close` renames it into place."""

    def __init__(self, path: str):
        self.path, self.partial = path, path + ".partial"
        self.tar = tarfile.open(self.partial, "w")

    def add(self, key: str, mp4: bytes, metadata: dict) -> None:
        _add(self.tar, f"{key}.mp4", mp4)
        _add(self.tar, f"{key}.json", json.dumps(metadata, sort_keys=True).encode())

    def close(self) -> None:
        self.tar.close()
        with open(self.partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.partial, self.path)


def iter_shards(paths: Iterable[str]) -> Iterator[dict]:
    """Samples of webdataset shards: {"__key__", "__shard__", "mp4": bytes, "json": dict} per clip."""
    for path in paths:
        with tarfile.open(path) as tar:
            sample: dict = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                if sample and key != sample["__key__"]:
                    yield sample
                    sample = {}
                payload = tar.extractfile(member).read()
                sample.update({"__key__": key, "__shard__": path,
                               ext: json.loads(payload) if ext == "json" else payload})
            if sample:
                yield sample
