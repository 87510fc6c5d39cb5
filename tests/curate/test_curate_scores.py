"""Probe, motion and text stages on rendered videos with known truth (no Ray)."""
import av
import cv2
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


# --- real footage and real photographs (svd_fast.real_media) -----------------------------------

def _real_clip(media, name, start, end):
    path = media(name)
    info = probe_video(path)
    return decode_clip(path, start, end, info.pts[start], DecodeConfig(), MotionConfig(), info.fps), info.fps


def _camera_move(media, photo, frames=25, shift=(0.0, 0.0), zoom=0.0, size=(192, 128)):
    """A camera moving over a real photograph: the crop window slides `shift` pixels (x, y) and
    shrinks by the factor `zoom` per frame, so the picture moves the other way / grows."""
    from PIL import Image

    image = np.asarray(Image.open(media(photo)).convert("RGB"))
    height, width = image.shape[:2]
    out = []
    for t in range(frames):
        w = size[0] * 1.6 * (1 - zoom) ** t
        h = w * size[1] / size[0]
        cx, cy = width / 2 + shift[0] * (t - frames / 2), height / 2 + shift[1] * (t - frames / 2)
        matrix = np.float32([[w / size[0], 0, cx - w / 2], [0, h / size[1], cy - h / 2]])
        out.append(cv2.warpAffine(image, matrix, size, flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP))
    return np.stack(out)


def test_motion_ranks_locked_off_below_camera_moves(media):
    """vtest is a locked-off camera with people walking; the opening bikes shot moves over a street
    (everything in it slides down the frame); a pan over a real photograph moves every pixel."""
    locked, _ = _real_clip(media, "vtest", 0, 100)
    moving, _ = _real_clip(media, "bikes", 0, 30)
    pan = _camera_move(media, "coffee", frames=25, shift=(3.0, 0.0))
    # The pan's frames at 2 fps of a 25 fps video, at the motion stage's 16 px short side.
    pan_small = np.stack([cv2.resize(f, (24, 16), interpolation=cv2.INTER_AREA) for f in pan[::12]])
    scores = motion_score(locked.motion), motion_score(moving.motion), motion_score(pan_small)
    assert scores[0] < 0.4 < min(scores[1:]), scores


def test_caption_says_true_camera_and_subject_motion(media):
    from svd_fast.curate.captions import TrivialCaptioner, describe_motion

    times = [t / 25 for t in range(0, 25, 3)]
    pan = _camera_move(media, "coffee", shift=(2.0, 0.0))[::3]  # the view slides right: the camera pans right
    motion = describe_motion(pan, times)
    assert motion.camera == "camera pans right"
    # 2 px a frame at 25 fps over a window 1.6 x 192 px wide (shown at 192 px): 0.163 widths/s.
    assert motion.camera_speed == pytest.approx(2.0 * 25 / (192 * 1.6), rel=0.2)
    tilt = describe_motion(_camera_move(media, "astronaut", shift=(0.0, -2.0))[::3], times)
    assert tilt.camera == "camera tilts up"
    zoom = describe_motion(_camera_move(media, "chelsea", zoom=0.01)[::3], times)
    assert zoom.camera == "camera zooms in" and zoom.camera_speed == pytest.approx(0.25, rel=0.3)
    locked, fps = _real_clip(media, "vtest", 0, 100)
    caption = TrivialCaptioner().caption_video(locked.caption, [i * 99 / 7 / fps for i in range(8)])
    # Hand-checked: a green lawn and grey paving, evenly lit, people walking in a small part of it.
    assert caption.startswith("an evenly lit scene, mostly green (") and "and grey (" in caption
    assert "; static camera; motion in " in caption


def test_text_filter_finds_a_title_card_and_ignores_texture(media):
    """Burned-in titles over real footage count as text; real textures (grass, gravel) do not."""
    from PIL import Image

    detector = TesseractDetector()
    frames, _ = _real_clip(media, "bigbuckbunny", 0, 132)
    titled = frames.key.copy()
    for frame in titled:
        cv2.putText(frame, "THE BIG BUCK", (40, 150), cv2.FONT_HERSHEY_DUPLEX, 2.0, (255, 255, 255), 4, cv2.LINE_AA)
        cv2.putText(frame, "BUNNY STORY", (40, 260), cv2.FONT_HERSHEY_DUPLEX, 2.0, (255, 255, 255), 4, cv2.LINE_AA)
    card = np.zeros_like(frames.key)
    for frame in card:
        cv2.putText(frame, "CHAPTER ONE", (60, 240), cv2.FONT_HERSHEY_DUPLEX, 2.4, (235, 235, 235), 4, cv2.LINE_AA)
    assert text_area(frames.key, detector, 360) < 0.01
    assert text_area(titled, detector, 360) > 0.05 and text_area(card, detector, 360) > 0.03
    for texture in ("grass", "gravel", "hubble_deep_field"):
        image = np.asarray(Image.open(media(texture)).convert("RGB"))
        assert text_area(np.stack([image] * 3), detector, 360) < 0.01, texture
