"""Cut detection against hand-labelled real footage, real shots joined by rendered transitions of
every kind (exact truth), closed forms, and the span bookkeeping (no frame disappears)."""
import numpy as np
import pytest

from svd_fast.curate import cut_eval
from svd_fast.curate.config import CutConfig
from svd_fast.curate.cuts import (ClipSpan, Transition, clip_spans, compute_features, detect_from_features,
                                  detect_transitions, find_clips, merge_transitions, verify_gradual)
from svd_fast.curate.probe import probe_video
from svd_fast.curate.synthetic import Scene, render_video


def test_real_footage_cuts(real_cut_set):
    """Hand-checked hard cuts in a street montage and a film excerpt; continuous shots stay whole."""
    result = cut_eval.score(real_cut_set, CutConfig())
    assert result["cut"]["true"] == 9
    assert result["cut"]["precision"] >= 0.95 and result["cut"]["recall"] >= 0.95, result["errors"]
    for video in real_cut_set:
        if not video.truth:  # carphone (hand-held in a car), bigbuckbunny, tree (hand-held), vtest (locked off)
            assert detect_from_features(video.features, video.fps, CutConfig()) == [], video.name


def test_rendered_transitions_of_every_kind(transition_cut_set):
    """Exact truth: cuts within 2 frames, dissolves and fades within 4, over real moving shots."""
    result = cut_eval.score(transition_cut_set, CutConfig())
    assert {kind: result[kind]["true"] for kind in ("cut", "dissolve", "fade", "wipe")} == \
        {"cut": 2, "dissolve": 4, "fade": 4, "wipe": 3}
    for kind in ("cut", "dissolve", "fade", "wipe"):
        assert result[kind]["precision"] >= 0.95 and result[kind]["recall"] >= 0.95, (kind, result["errors"])


def test_flash_and_lighting_change_are_not_cuts(real_cut_set):
    """A one-frame flash and a slow brightening inside a real continuous shot cut nothing."""
    video = next(v for v in real_cut_set if v.name == "carphone")
    frames = cut_eval.decode_frames(video.path, CutConfig().detect_short_side)
    flashed = [f if i != 60 else np.clip(f.astype(np.int16) + 140, 0, 255).astype(np.uint8) for i, f in enumerate(frames)]
    gain = np.linspace(1.0, 1.7, len(frames))
    brightened = [np.clip(f * g, 0, 255).astype(np.uint8) for f, g in zip(frames, gain)]
    for altered in (flashed, brightened):
        assert detect_from_features(compute_features(altered), video.fps, CutConfig()) == []


def test_dropped_spans_cover_every_frame(transition_cut_set):
    """Clips and dropped spans tile the video; transition spans are the transitions' own frames."""
    video = transition_cut_set[1]
    info = probe_video(video.path)
    spans = find_clips(video.path, info, CutConfig(keyframe_snap_seconds=0.5))
    assert spans[0].start == 0 and spans[-1].end == info.num_frames
    assert all(a.end == b.start and b.end > b.start for a, b in zip(spans, spans[1:]))
    transitions = [s for s in spans if s.reason.startswith("transition_")]
    gradual = [t for t in video.truth if t[0] != t[1]]
    pairs, _, _ = cut_eval.match([Transition(s.start, s.end, s.reason[len("transition_"):]) for s in transitions], gradual)
    assert len(pairs) == len(gradual)
    assert {s.reason for s in spans} <= {"", "too_short", "keyframe_snap", "transition_dissolve", "transition_fade",
                                         "transition_wipe"}


def test_linear_dissolve_closed_form():
    """A linear cross-fade of two random images: the mixture fit recovers its exact frames."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 128, (72, 96, 3)).astype(np.float32)
    b = rng.integers(128, 256, (72, 96, 3)).astype(np.float32)
    frames = [a] * 20 + [(1 - (k + 1) / 11) * a + (k + 1) / 11 * b for k in range(10)] + [b] * 20
    features = compute_features(np.clip(frames, 0, 255).astype(np.uint8))
    assert verify_gradual(features, 15, 34, CutConfig()) == Transition(20, 30, "dissolve")
    # The same frames with no blend (a hard cut at 20) is no gradual transition.
    cut = compute_features(np.asarray([a] * 20 + [b] * 20, np.uint8))
    assert verify_gradual(cut, 15, 24, CutConfig()) is None
    assert detect_from_features(cut, 25.0, CutConfig()) == [Transition(20, 20, "cut", "cut")]


def test_old_synthetic_cuts_and_fades(cut_videos):
    """The rendered scenes of colour and moving squares: hard cuts and one-second cross-fades."""
    hits = true = found = 0
    for video in cut_videos:
        detected = detect_transitions(cut_eval.decode_frames(video.path, 144), video.fps, CutConfig())
        truth = [(s, e, "cut" if s == e else "dissolve") for s, e in video.transitions]
        pairs, _, _ = cut_eval.match(detected, truth)
        hits, true, found = hits + len(pairs), true + len(truth), found + len(detected)
    assert true == 18 and hits / found >= 0.95 and hits / true >= 0.95, (hits, found, true)


def test_keyframe_snapping(tmp_path):
    """Starts move forward to the first keyframe within the snap window; the skipped frames are recorded."""
    scenes = [Scene(20, "blue", "yellow"), Scene(30, "green", "white"), Scene(30, "purple", "yellow")]
    video = render_video(str(tmp_path / "gop.mp4"), scenes, fps=10.0, gop=8)
    info = probe_video(video.path)
    assert info.keyframes == list(range(0, video.num_frames, 8))
    spans = find_clips(video.path, info, CutConfig(keyframe_snap_seconds=0.5, min_clip_seconds=0.5))
    # Cuts at 20 and 50; keyframes at 24 (within 5 frames of 20) and 56 (6 frames after 50: too far).
    assert [(s.start, s.end, s.reason) for s in spans] == [(0, 20, ""), (20, 24, "keyframe_snap"), (24, 50, ""),
                                                           (50, 80, "")]


def test_spans_record_transitions_and_short_shots():
    spans = clip_spans([Transition(10, 10), Transition(40, 52, "dissolve")], 60, [0], 10.0,
                       CutConfig(min_clip_seconds=1.0, keyframe_snap_seconds=0.0))
    assert spans == [ClipSpan(0, 10, ""), ClipSpan(10, 40, ""), ClipSpan(40, 52, "transition_dissolve"),
                     ClipSpan(52, 60, "too_short")]


def test_merge_prefers_hard_cuts_inside_short_ramps():
    merged = merge_transitions([Transition(28, 33, "dissolve", "gradual_4fps"), Transition(30, 30, "cut", "cut"),
                                Transition(80, 90, "fade", "gradual_1fps"), Transition(84, 92, "fade", "gradual_4fps")])
    assert merged == [Transition(30, 30, "cut", "cut"), Transition(80, 92, "fade", "gradual_1fps")]


def test_unknown_level_kind(cut_videos):
    video = cut_videos[0]
    with pytest.raises(ValueError, match="unknown kind 'magic'"):
        find_clips(video.path, probe_video(video.path), CutConfig(levels=[{"name": "x", "kind": "magic"}]))
