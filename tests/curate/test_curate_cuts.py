"""Cascaded cut detection against rendered ground truth (hard cuts and one-second fades)."""
import numpy as np
import pytest

from svd_fast.curate.config import CutConfig
from svd_fast.curate.cuts import ClipSpan, Transition, clip_spans, find_clips, merge_transitions, refine_transition
from svd_fast.curate.probe import probe_video
from svd_fast.curate.synthetic import Scene, render_video

TOLERANCE = 2  # frames, on both ends of a transition (the requirement)


def match(found: list[Transition], truth: list[tuple[int, int]]) -> int:
    """Detected transitions within TOLERANCE frames of a true one at both ends (each used once)."""
    unused, hits = list(truth), 0
    for t in found:
        for candidate in unused:
            if abs(t.start - candidate[0]) <= TOLERANCE and abs(t.end - candidate[1]) <= TOLERANCE:
                unused.remove(candidate)
                hits += 1
                break
    return hits


def detected_transitions(spans: list[ClipSpan]) -> list[Transition]:
    """Transitions implied by consecutive clips (keyframe snapping is off in these tests)."""
    return [Transition(a.end, b.start) for a, b in zip(spans, spans[1:])]


def test_cut_precision_recall(cut_videos):
    config = CutConfig(keyframe_snap_seconds=0.0, min_clip_seconds=0.5)
    found_total = true_total = hits = 0
    for video in cut_videos:
        spans = find_clips(video.path, probe_video(video.path), config)
        found = detected_transitions(spans)
        hits += match(found, video.transitions)
        found_total += len(found)
        true_total += len(video.transitions)
    precision, recall = hits / found_total, hits / true_total
    assert true_total == 18 and any(s != e for s, e in cut_videos[0].transitions)  # both kinds present
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_clips_cover_the_shots(cut_videos):
    """Each clip is one shot: it starts at the shot's first clean frame and ends before the next transition."""
    video = cut_videos[1]
    spans = find_clips(video.path, probe_video(video.path), CutConfig(keyframe_snap_seconds=0.0, min_clip_seconds=0.5))
    assert len(spans) == len(video.clips)
    for span, truth in zip(spans, video.clips):
        assert abs(span.start - truth.start) <= TOLERANCE and abs(span.end - truth.end) <= TOLERANCE
        assert span.reason == ""


def test_single_detector_misses_fades(cut_videos):
    """The cascade is needed: the full-rate content detector alone finds only the hard cuts."""
    video = cut_videos[2]
    alone = CutConfig(detectors=[{"kind": "content", "fps": 0, "threshold": 27.0}], keyframe_snap_seconds=0.0)
    found = detected_transitions(find_clips(video.path, probe_video(video.path), alone))
    hard = [t for t in video.transitions if t[0] == t[1]]
    assert match(found, video.transitions) == len(hard) < len(video.transitions)


def test_keyframe_snapping(tmp_path):
    """Starts move forward to the first keyframe within the snap window, never before the cut."""
    scenes = [Scene(20, "blue", "yellow"), Scene(30, "green", "white"), Scene(30, "purple", "yellow")]
    video = render_video(str(tmp_path / "gop.mp4"), scenes, fps=10.0, gop=8)
    info = probe_video(video.path)
    assert info.keyframes == list(range(0, video.num_frames, 8))
    spans = find_clips(video.path, info, CutConfig(keyframe_snap_seconds=0.5, min_clip_seconds=0.5))
    # Cuts at 20 and 50; keyframes at 24 (within 5 frames of 20) and 56 (6 frames after 50: too far).
    assert [(s.start, s.end) for s in spans] == [(0, 20), (24, 50), (50, 80)]


def test_too_short_clips_are_marked():
    spans = clip_spans([Transition(10, 10), Transition(40, 52)], 60, [0], 10.0,
                       CutConfig(min_clip_seconds=1.0, keyframe_snap_seconds=0.0))
    assert spans == [ClipSpan(0, 10, ""), ClipSpan(10, 40, ""), ClipSpan(52, 60, "too_short")]


def test_refine_finds_fade_extent():
    """Closed form: a linear cross-fade changes frames by a constant amount for its whole length."""
    diff = np.full(100, 1.0, np.float32)
    diff[0] = 0
    diff[40:53] = 6.0  # fade frames 40..51 blended, 52 is the first clean frame
    diff[80] = 90.0  # hard cut
    # A 2 fps detector (step 6 at 12 fps) reporting frame 48 sees the fade somewhere in 43..48.
    assert refine_transition(diff, 48, 6, 12.0, 2.0) == Transition(40, 52)
    assert refine_transition(diff, 80, 1, 12.0, 2.0) == Transition(80, 80)
    # Uniform motion everywhere: no transition stands out.
    assert refine_transition(np.full(100, 5.0, np.float32), 50, 6, 12.0, 2.0) is None


def test_merge_transitions():
    merged = merge_transitions([Transition(40, 52), Transition(44, 44), Transition(80, 80), Transition(53, 55)])
    assert merged == [Transition(40, 55), Transition(80, 80)]


def test_unknown_detector_kind(cut_videos):
    video = cut_videos[0]
    with pytest.raises(ValueError, match="unknown kind 'magic'"):
        find_clips(video.path, probe_video(video.path), CutConfig(detectors=[{"kind": "magic", "fps": 0, "threshold": 1}]))
