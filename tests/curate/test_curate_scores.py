"""Probe, motion and text stages on rendered videos with known truth (no Ray)."""
import av
import numpy as np
import pytest

from svd_fast.curate.config import DecodeConfig, MotionConfig
from svd_fast.curate.frames import decode_clip, key_indices, motion_indices, pack, unpack
from svd_fast.curate.motion import motion_score
from svd_fast.curate.probe import UnreadableVideo, probe_video
from svd_fast.curate.synthetic import write_broken_inputs
from svd_fast.curate.text import TesseractDetector, box_fraction, text_area


def clip_frames(video, truth):
    info = probe_video(video.path)
    return decode_clip(video.path, truth.start, truth.end, info.pts[truth.start], DecodeConfig(), MotionConfig(),
                       info.fps)


def test_probe_matches_rendering(cut_videos):
    for video in cut_videos:
        info = probe_video(video.path)
        assert (info.num_frames, info.fps, info.width, info.height, info.codec) == \
            (video.num_frames, video.fps, video.width, video.height, "h264")
        assert info.keyframes[0] == 0 and len(info.pts) == video.num_frames


def test_probe_rejects_broken_files(tmp_path):
    expected = write_broken_inputs(str(tmp_path))
    assert len(expected) == 4
    for name, reason in expected.items():
        with pytest.raises(UnreadableVideo, match=reason):
            probe_video(str(tmp_path / name))


def test_decoded_frames_are_the_right_ones(cut_videos):
    """Seeking decode returns exactly the requested frame numbers (compared with a full decode)."""
    video = cut_videos[0]
    with av.open(video.path) as container:
        everything = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    truth = video.clips[3]
    frames = clip_frames(video, truth)
    for got, index in zip(frames.key, key_indices(truth.start, truth.end)):
        np.testing.assert_array_equal(got, everything[index])
    assert len(frames.motion) == len(motion_indices(truth.start, truth.end, video.fps, 2.0))
    assert frames.motion.shape[1] == 16  # short side of the flow frames
    np.testing.assert_array_equal(unpack(pack(frames.key)), frames.key)


def test_static_clips_rank_below_moving_clips(cut_videos):
    """Every still shot scores below every moving shot, across all renderings."""
    static, moving = [], []
    for video in cut_videos:
        for truth in video.clips:
            (moving if truth.moving else static).append(motion_score(clip_frames(video, truth).motion))
    assert len(static) == 9 and len(moving) == 12
    assert max(static) < min(moving), (static, moving)


def test_motion_of_a_known_shift():
    """Closed form: a smooth pattern shifted by one pixel per frame has flow magnitude ~1."""
    y, x = np.mgrid[0:16, 0:28].astype(np.float32)
    frames = [np.repeat((128 + 60 * np.sin((x - t) / 3.0) * np.cos(y / 4.0))[..., None], 3, -1).astype(np.uint8)
              for t in range(4)]
    assert motion_score(np.stack(frames)) == pytest.approx(1.0, abs=0.25)
    assert motion_score(np.stack([frames[0]] * 4)) < 0.05  # Farneback leaves a little noise


def test_text_area_within_two_points(text_video):
    detector = TesseractDetector()
    for truth in text_video.clips:
        measured = text_area(clip_frames(text_video, truth).key, detector, ocr_short_side=360)
        assert abs(measured - truth.text_area) <= 0.02, (truth, measured)
    assert sum(t.text_area > 0.05 for t in text_video.clips) == 4


def test_box_fraction_counts_overlaps_once():
    assert box_fraction([(0, 0, 10, 10), (5, 5, 15, 15)], 20, 20) == pytest.approx((100 + 100 - 25) / 400)
