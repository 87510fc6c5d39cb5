"""Row-level stages: the plain per-clip functions wrapped for Ray Data (dict in, dict out).

Every row carries every column, with typed placeholders (-1, NaN, "", b"") so Arrow blocks
from different stages always share one schema. A row whose `reason` is set (too short, decode
error) passes through the scoring stages untouched. Frames travel as .npy bytes in the payload
columns and are dropped before rows reach the driver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import av

from .captions import build_captioner
from .clip_scores import ClipScorer
from .config import CurateConfig
from .cuts import find_clips
from .frames import caption_indices, decode_clip, pack, unpack
from .motion import motion_score
from .probe import UnreadableVideo, probe_video
from .text import make_detector, text_area

SCORE_COLUMNS = ["motion", "text_area", "aesthetic", "clip_score"]
CAPTION_COLUMNS = ["caption", "caption_image", "caption_video", "caption_summary"]
PAYLOAD_COLUMNS = ["key_frames", "motion_frames", "caption_frames"]
CLIP_COLUMNS = ["source", "clip_index", "num_clips", "start_frame", "end_frame", "fps", "width", "height",
                "codec", "start_pts", *SCORE_COLUMNS, *CAPTION_COLUMNS, "reason"]


def _blank_row(source: str, source_path: str) -> dict:
    row = {"source": source, "source_path": source_path, "clip_index": -1, "num_clips": 0, "start_frame": -1,
           "end_frame": -1, "fps": math.nan, "width": -1, "height": -1, "codec": "", "start_pts": -1,
           "reason": "", "error": ""}
    row.update({name: math.nan for name in SCORE_COLUMNS})
    row.update({name: "" for name in CAPTION_COLUMNS})
    row.update({name: b"" for name in PAYLOAD_COLUMNS})
    return row


def source_rows(item: dict, config: CurateConfig) -> list[dict]:
    """Stages 1a + 2 on one source: probe it, find its clips; one error row if it is unreadable."""
    source, path = item["source"], item["source_path"]
    try:
        info = probe_video(path)
        spans = find_clips(path, info, config.cuts)
    except UnreadableVideo as error:
        return [dict(_blank_row(source, path), error=str(error))]
    except (av.FFmpegError, OSError) as error:
        return [dict(_blank_row(source, path), error=f"decode failed during cut detection: {error}")]
    except Exception as error:  # noqa: BLE001 - one odd file must not end a run of thousands: record it
        return [dict(_blank_row(source, path), error=_unexpected(error))]
    if not spans:
        return [dict(_blank_row(source, path), error="no clips: transitions cover the whole video")]
    rows = []
    for index, span in enumerate(spans):
        row = _blank_row(source, path)
        row.update(clip_index=index, num_clips=len(spans), start_frame=span.start, end_frame=span.end, fps=info.fps,
                   width=info.width, height=info.height, codec=info.codec, start_pts=info.pts[span.start],
                   reason=span.reason)
        rows.append(row)
    return rows


def _unexpected(error: Exception) -> str:
    """One line for an error no stage anticipated (a decoder or library bug on a strange file)."""
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"unexpected {type(error).__name__} while reading the video: {text}"


def _active(row: dict) -> bool:
    return not row["reason"] and not row["error"]


def decode_row(row: dict, config: CurateConfig) -> dict:
    """Stage 1b: attach the frames the scoring stages need."""
    if not _active(row):
        return row
    try:
        frames = decode_clip(row["source_path"], int(row["start_frame"]), int(row["end_frame"]), int(row["start_pts"]),
                             config.decode, config.motion, float(row["fps"]))
    except (av.FFmpegError, ValueError) as error:
        return dict(row, reason=f"decode_error: {error}")
    except Exception as error:  # noqa: BLE001 - as in source_rows
        return dict(row, reason=f"decode_error: {_unexpected(error)}")
    return dict(row, key_frames=pack(frames.key), motion_frames=pack(frames.motion), caption_frames=pack(frames.caption))


def motion_row(row: dict, config: CurateConfig) -> dict:
    """Stage 3."""
    if not _active(row):
        return row
    return dict(row, motion=motion_score(unpack(row["motion_frames"])))


_TEXT_DETECTORS: dict = {}


def text_row(row: dict, config: CurateConfig) -> dict:
    """Stage 4 (the detector is built once per worker process)."""
    if not _active(row):
        return row
    settings = (config.text.detector, config.text.min_confidence)
    if settings not in _TEXT_DETECTORS:
        _TEXT_DETECTORS[settings] = make_detector(*settings)
    return dict(row, text_area=text_area(unpack(row["key_frames"]), _TEXT_DETECTORS[settings], config.text.ocr_short_side))


class CaptionStage:
    """Stage 6 as a Ray actor: models load once."""

    def __init__(self, config: CurateConfig, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.config = config
        self.captioner = build_captioner(config.captions)

    def __call__(self, row: dict) -> dict:
        if not _active(row):
            return row
        start, end, fps = int(row["start_frame"]), int(row["end_frame"]), float(row["fps"])
        times = [(index - start) / fps for index in caption_indices(start, end, self.config.decode.caption_frames)]
        captions = self.captioner.captions(unpack(row["key_frames"]), unpack(row["caption_frames"]), times)
        return dict(row, **captions)


class ClipStage:
    """Stage 5 as a Ray actor: CLIP and the aesthetic head load once."""

    def __init__(self, config: CurateConfig, threads: int = 1):
        self.scorer = ClipScorer(config.clip.model_path, config.clip.aesthetic_head, config.clip.aesthetic_activation,
                                 threads)

    def __call__(self, row: dict) -> dict:
        if not _active(row):
            return row
        return dict(row, **self.scorer.score(unpack(row["key_frames"]), row["caption"]))


def drop_payload(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in PAYLOAD_COLUMNS}


@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: Callable  # fn(row, config) for tasks; for actors a class built as fn(config, threads)
    actor: bool


def clip_stages(config: CurateConfig) -> list[StageSpec]:
    """The per-clip stages in order (captions before CLIP: CLIP scores the caption)."""
    stages = [StageSpec("decode", decode_row, False)]
    if config.motion.enabled:
        stages.append(StageSpec("motion", motion_row, False))
    if config.text.enabled:
        stages.append(StageSpec("text", text_row, False))
    if config.captions.enabled:
        stages.append(StageSpec("captions", CaptionStage, True))
    if config.clip.enabled:
        stages.append(StageSpec("clip", ClipStage, True))
    return stages


def process_source_locally(item: dict, config: CurateConfig, actors: dict | None = None) -> list[dict]:
    """Every stage on one source in this process, without Ray (tests, debugging, benchmarks).

    `actors` caches the model stages between calls ({stage name: instance}).
    """
    actors = {} if actors is None else actors
    rows = []
    for row in source_rows(item, config):
        for stage in clip_stages(config):
            if stage.actor:
                if stage.name not in actors:
                    actors[stage.name] = stage.fn(config)
                row = actors[stage.name](row)
            else:
                row = stage.fn(row, config)
        rows.append(drop_payload(row))
    return rows
