"""Stage 2: cascaded cut detection and keyframe-aware clipping.

The paper runs PySceneDetect as a cascade of three detectors at different frame rates and
thresholds, so that hard cuts (one huge jump between neighbouring frames) and slow fades (many
small changes, large only between frames far apart) are both found. Here every detector sees the
same single decode pass, each at its own sampling step. A detector sampling every k frames only
says a transition happened somewhere in the last k frames; `refine_transition` then finds its
exact extent in the per-frame difference signal (mean absolute RGB change between neighbours).

A transition is (start, end): `start` is the first frame that differs from the old shot (the
new shot's first frame for a hard cut, the first blended frame of a fade) and `end` the first
frame of the new shot after the transition (equal to `start` for a hard cut). Shots are the
frame ranges between transitions; each becomes a clip whose start moves forward to a keyframe
when one is close, so the clip can be cut by seeking without re-encoding.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector, HistogramDetector

from .config import CutConfig
from .probe import VideoInfo
from .video import frame_to_rgb, iter_decoded

# Baseline change below which footage counts as perfectly still (mean |RGB diff| per frame);
# keeps the contrast test meaningful on noise-free synthetic or screen-captured video.
STILL_BASELINE = 0.5
# A transition's frames are those whose change rises above this fraction of the way from the
# surrounding baseline to the transition's peak.
RUN_LEVEL = 0.4
# Seconds of footage on each side of a transition that set its baseline; long enough that a
# one-second fade fills at most a sixth of it, so the quieter quarter is the shot itself.
CONTEXT_SECONDS = 3.0
# Transitions closer than this many frames are one.
MERGE_GAP = 2


@dataclass(frozen=True)
class Transition:
    start: int  # first frame that differs from the old shot
    end: int  # first clean frame of the new shot (== start for a hard cut)


@dataclass(frozen=True)
class ClipSpan:
    start: int
    end: int  # exclusive
    reason: str = ""  # "" when the clip goes on to scoring, else why it was dropped here


def make_detector(kind: str, threshold: float, min_scene_samples: int):
    """A PySceneDetect detector by name with its own threshold scale."""
    if kind == "content":
        return ContentDetector(threshold=threshold, min_scene_len=min_scene_samples)
    if kind == "adaptive":
        return AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_scene_samples)
    if kind == "histogram":
        return HistogramDetector(threshold=threshold, min_scene_len=min_scene_samples)
    raise ValueError(f"cuts.detectors: unknown kind {kind!r} (content, adaptive or histogram)")


class _SampledDetector:
    """One cascade member: a scenedetect detector fed every `step`-th frame."""

    def __init__(self, spec: dict, native_fps: float):
        self.step = 1 if not spec.get("fps") else max(1, int(round(native_fps / spec["fps"])))
        self.rate = native_fps / self.step
        # A third of a second between detections at this rate, at least one sample.
        self.detector = make_detector(spec["kind"], float(spec["threshold"]), max(1, int(self.rate / 3)))
        self.candidates: list[tuple[int, int]] = []  # (frame index of the detection, step)
        self.last_sample = 0

    def feed(self, index: int, bgr: np.ndarray) -> None:
        if index % self.step:
            return
        self.last_sample = index // self.step
        cuts = self.detector.process_frame(FrameTimecode(self.last_sample, fps=self.rate), bgr)
        self.candidates += [(cut.frame_num * self.step, self.step) for cut in cuts]

    def finish(self) -> None:
        cuts = self.detector.post_process(FrameTimecode(self.last_sample, fps=self.rate))
        self.candidates += [(cut.frame_num * self.step, self.step) for cut in cuts]


def refine_transition(diff: np.ndarray, candidate: int, step: int, fps: float,
                      min_contrast: float) -> Transition | None:
    """Exact extent of the transition a detector reported at frame `candidate`.

    diff[i] is the change from frame i-1 to frame i (diff[0] = 0). The detector compared frames
    candidate-step and candidate, so the largest change lies in (candidate-step, candidate]. The
    transition is the unbroken run of frames around that peak whose change stands out from the
    footage on the same side: each side's baseline is the quieter quarter of the CONTEXT_SECONDS
    before (or after) the peak, so a still shot fading into a moving one ends where the motion
    takes over. A run that does not beat the mean of the two baselines `min_contrast` times over
    is motion inside one shot, not a transition: None.
    """
    low = max(1, candidate - step + 1)
    peak = low + int(np.argmax(diff[low: candidate + 1]))
    context = max(2, int(round(CONTEXT_SECONDS * fps)))
    before = diff[max(1, peak - context): peak]
    after = diff[peak + 1: peak + 1 + context]
    base_before = float(np.percentile(before, 25)) if before.size else 0.0
    base_after = float(np.percentile(after, 25)) if after.size else 0.0
    start = end = peak
    while start > 1 and diff[start - 1] >= base_before + RUN_LEVEL * (diff[peak] - base_before):
        start -= 1
    while end + 1 < len(diff) and diff[end + 1] >= base_after + RUN_LEVEL * (diff[peak] - base_after):
        end += 1
    if diff[start: end + 1].mean() < min_contrast * max((base_before + base_after) / 2, STILL_BASELINE):
        return None
    return Transition(start, end)


def merge_transitions(transitions: Iterable[Transition]) -> list[Transition]:
    """Union of transitions that overlap or lie within MERGE_GAP frames of each other.

    Several detectors see the same transition; a fade can dip for a frame and come back as two
    runs; and the frames between two cuts that close are no shot anyway.
    """
    merged: list[Transition] = []
    for t in sorted(transitions, key=lambda t: (t.start, t.end)):
        if merged and t.start <= merged[-1].end + MERGE_GAP:
            merged[-1] = Transition(merged[-1].start, max(merged[-1].end, t.end))
        else:
            merged.append(t)
    return merged


def detect_transitions(frames: Iterable[np.ndarray], fps: float, config: CutConfig) -> list[Transition]:
    """Transitions in a stream of RGB frames (one pass, nothing but scalars kept per frame)."""
    cascade = [_SampledDetector(spec, fps) for spec in config.detectors]
    diffs: list[float] = [0.0]
    previous = None
    for index, rgb in enumerate(frames):
        current = rgb.astype(np.int16)
        if previous is not None:
            diffs.append(float(np.abs(current - previous).mean()))
        previous = current
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # scenedetect expects OpenCV's channel order
        for member in cascade:
            member.feed(index, bgr)
    for member in cascade:
        member.finish()
    diff = np.asarray(diffs, np.float32)
    found = []
    for member in cascade:
        for candidate, step in member.candidates:
            transition = refine_transition(diff, min(candidate, len(diff) - 1), step, fps,
                                           config.min_transition_contrast)
            if transition is not None:
                found.append(transition)
    return merge_transitions(found)


def clip_spans(transitions: list[Transition], num_frames: int, keyframes: list[int], fps: float,
               config: CutConfig) -> list[ClipSpan]:
    """Shots between transitions as clips, starts snapped forward to a nearby keyframe.

    The snap never crosses into the previous shot (it only moves forward) and never goes past
    `keyframe_snap_seconds`; shots left shorter than `min_clip_seconds` are marked too_short.
    """
    bounds = [0]
    for t in transitions:
        bounds += [t.start, t.end]
    bounds.append(num_frames)
    snap = int(round(config.keyframe_snap_seconds * fps))
    min_frames = max(1, int(round(config.min_clip_seconds * fps)))
    keys = np.asarray(keyframes, np.int64)
    spans = []
    for start, end in zip(bounds[0::2], bounds[1::2]):
        if end <= start:
            continue
        first_key = keys[np.searchsorted(keys, start):]
        if first_key.size and first_key[0] <= start + snap and first_key[0] < end:
            start = int(first_key[0])
        spans.append(ClipSpan(start, end, "" if end - start >= min_frames else "too_short"))
    return spans


def find_clips(path: str, info: VideoInfo, config: CutConfig) -> list[ClipSpan]:
    """Stage 2 on one source: decode at low resolution, detect transitions, cut into clips."""
    if not config.enabled:
        transitions: list[Transition] = []
    else:
        frames = (frame_to_rgb(f, config.detect_short_side) for f in iter_decoded(path))
        transitions = detect_transitions(frames, info.fps, config)
    return clip_spans(transitions, info.num_frames, info.keyframes, info.fps, config)
