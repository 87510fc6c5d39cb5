"""Source videos from real photographs and footage (svd_fast.train.real_footage)."""
import numpy as np
import pytest

from svd_fast.curate.video import encode_mp4
from svd_fast.train.real_footage import PanSpec, load_photo, photo_pan_video, random_pan_spec, video_parts


def _photo(h=96, w=144):
    """A smooth, textured test picture (no flat regions: flow needs texture)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    picture = np.stack([np.sin(x / 5) + np.cos(y / 7), np.sin((x + y) / 6), np.cos(x / 4 - y / 9)], -1)
    return ((picture - picture.min()) / np.ptp(picture) * 255).astype(np.uint8)


def test_a_pan_moves_the_picture_by_the_specified_speed():
    photo = _photo()
    # window = 0.5 of the short side (48 px of the photo) shown at 48 px: 1 photo px per frame px;
    # 0.25 windows per second at 12 fps = 1 px per frame to the right (content moves left).
    spec = PanSpec(seconds=1.0, fps=12.0, window=0.5, centre=(0.4, 0.5), velocity=(0.25, 0.0), zoom=0.0)
    frames = photo_pan_video(photo, spec, 48)
    assert len(frames) == 12 and frames[0].shape == (48, 48, 3) and frames[0].dtype == np.uint8
    # frame t is frame 0 shifted left by t pixels (exactly, integer steps at scale 1)
    np.testing.assert_array_equal(frames[3][:, :-3], frames[0][:, 3:])
    np.testing.assert_array_equal(frames[11][:, :-11], frames[0][:, 11:])


def test_a_still_spec_gives_identical_frames_and_random_specs_vary():
    spec = PanSpec(seconds=0.5, fps=8.0, window=0.7, centre=(0.5, 0.5), velocity=(0.0, 0.0), zoom=0.0)
    frames = photo_pan_video(_photo(), spec, 32)
    assert all(np.array_equal(f, frames[0]) for f in frames)
    specs = [random_pan_spec(np.random.default_rng(i)) for i in range(50)]
    speeds = [np.hypot(*s.velocity) for s in specs]
    assert 1 <= sum(v == 0 for v in speeds) <= 15  # about 10% still
    assert any(s.zoom != 0 for s in specs) and all(3.0 <= s.seconds <= 4.5 for s in specs)


def test_video_parts_are_short_scaled_down_and_cover_the_video(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(50)]
    path = tmp_path / "clip.mp4"
    path.write_bytes(encode_mp4(frames, fps=10))
    parts, fps = video_parts(path, short_side=36, max_seconds=2.0)
    assert fps == pytest.approx(10)
    assert [len(p) for p in parts] == [20, 20, 10]  # 50 frames: two full 2 s parts and a 1 s rest
    assert parts[0][0].shape == (36, 64, 3)
    parts, _ = video_parts(path, short_side=36, max_seconds=2.3)  # 23 + 23 + 4: the 0.4 s rest is dropped
    assert [len(p) for p in parts] == [23, 23]


def test_load_photo_gives_rgb_for_grey_images(tmp_path):
    from PIL import Image

    Image.fromarray(_photo()[..., 0]).save(tmp_path / "grey.png")
    photo = load_photo(tmp_path / "grey.png")
    assert photo.shape == (96, 144, 3) and np.array_equal(photo[..., 0], photo[..., 2])


def test_photo_crop_clips_are_pans_over_resampled_crops():
    import torch

    from svd_fast.train.real_footage import photo_crop_clips

    # A photo whose pixel values encode their own coordinates: a window of a crop resampled at
    # scale s must show coordinates that step by 1/s per pixel and shift the same way every frame.
    h, w = 120, 90
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    photo = torch.stack([ys, xs, torch.zeros_like(ys)])
    clips = photo_crop_clips([photo], count=20, frames=5, size=40, window=16, generator=torch.Generator().manual_seed(0),
                             max_shift=2)
    assert clips.shape == (20, 5, 3, 16, 16)
    for clip in clips:
        step_y = float((clip[0, 0, 1:, :] - clip[0, 0, :-1, :]).mean())
        step_x = float((clip[0, 1, :, 1:] - clip[0, 1, :, :-1]).mean())
        # Area resampling by a non-integer factor averages bins of unequal size: steps vary by a pixel.
        assert step_y == pytest.approx(step_x, rel=0.1)  # a square crop, one scale
        assert 90 * 0.25 / 40 * 0.9 <= step_y <= 90 / 40 * 1.1  # 25-100% of the short side over 40 px
        shifts = clip[1:, :2, 0, 0] - clip[:-1, :2, 0, 0]  # per-frame move of the top-left pixel (y, x)
        torch.testing.assert_close(shifts, shifts[:1].expand_as(shifts), atol=1.001, rtol=0)  # constant velocity (to a bin)
        assert float(shifts.abs().max()) <= 2 * (step_y + 0.5)  # at most max_shift window pixels (uneven bins) per frame
        assert float(clip.min()) >= 0 and float(clip[:, 0].max()) <= h and float(clip[:, 1].max()) <= w
