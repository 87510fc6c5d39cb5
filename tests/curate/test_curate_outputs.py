"""Filters (closed-form percentiles), webdataset shards (decoded back and compared) and config."""
import io
import json
import math

import av
import numpy as np
import pytest

from svd_fast.curate.config import CurateConfig, FilterConfig, load_config_file, parse_assignment, update_config
from svd_fast.curate.filters import Rule, build_rules, final_reason
from svd_fast.curate.probe import probe_video
from svd_fast.curate.shards import ShardWriter, clip_key, encode_clip, iter_shards, shard_is_complete


def test_percentile_thresholds():
    """Scores 0..99: the 25th/50th percentiles are 24.75 and 49.5 (linear interpolation)."""
    values = np.arange(100, dtype=np.float64)
    scores = {"motion": values, "aesthetic": values, "clip_score": values, "text_area": values / 1000}
    rules = {rule.reason: rule for rule in build_rules(scores, FilterConfig())}
    assert rules["low_motion"].threshold == pytest.approx(24.75)
    assert rules["low_aesthetic"].threshold == pytest.approx(24.75)
    assert rules["low_clip_score"].threshold == pytest.approx(49.5)
    assert rules["much_text"].threshold == pytest.approx(0.07425)
    assert rules["text_over_max"].threshold == 0.07
    kept = [v for v in values if not any(rule.fails(v) for rule in rules.values() if rule.column == "clip_score")]
    assert len(kept) == 50  # half the clips survive the CLIP filter


def test_absolute_thresholds_and_missing_scores():
    scores = {"motion": np.array([0.1, 0.2, np.nan]), "aesthetic": np.full(3, np.nan),
              "clip_score": np.array([0.3, 0.4, 0.5]), "text_area": np.full(3, np.nan)}
    rules = build_rules(scores, FilterConfig(min_clip_score=0.45, motion_drop_lowest=0.0))
    assert rules == [Rule("low_clip_score", "clip_score", 0.45, True)]  # no data, no rule; 0 drop, no rule


def test_final_reason_lists_every_failed_filter():
    rules = [Rule("low_motion", "motion", 1.0, True), Rule("much_text", "text_area", 0.01, False),
             Rule("text_over_max", "text_area", 0.07, False)]
    row = {"reason": "", "motion": 0.5, "text_area": 0.1}
    assert final_reason(row, rules) == "low_motion;much_text;text_over_max"
    assert final_reason(dict(row, motion=2.0, text_area=0.0), rules) == ""
    assert final_reason(dict(row, motion=math.nan, text_area=0.0), rules) == ""  # unscored: not filtered
    assert final_reason(dict(row, reason="too_short"), rules) == "too_short"


def test_shard_round_trip(cut_videos, tmp_path):
    """A shard written from a rendered video decodes back to the clip's exact frames."""
    video = cut_videos[0]
    info = probe_video(video.path)
    clips = [video.clips[1], video.clips[4]]
    path = str(tmp_path / "shard-000000.tar")
    writer = ShardWriter(path)
    keys = []
    for truth in clips:
        keys.append(clip_key("folder/x.y.mp4", truth.start))
        mp4 = encode_clip(video.path, truth.start, truth.end, info.pts[truth.start], info.fps, 576, 12)
        writer.add(keys[-1], mp4, {"start_frame": truth.start, "end_frame": truth.end})
    writer.close()
    assert shard_is_complete(path, keys) and not shard_is_complete(path, keys[:1])
    assert "." not in keys[0]
    with av.open(video.path) as container:
        source = [f.to_ndarray(format="rgb24").astype(np.float64) for f in container.decode(video=0)]
    samples = list(iter_shards([path]))
    assert [s["__key__"] for s in samples] == keys
    for sample, truth in zip(samples, clips):
        assert sample["json"] == {"start_frame": truth.start, "end_frame": truth.end}
        with av.open(io.BytesIO(sample["mp4"])) as container:
            decoded = [f.to_ndarray(format="rgb24").astype(np.float64) for f in container.decode(video=0)]
        assert len(decoded) == truth.end - truth.start
        for offset in (0, len(decoded) - 1):
            mse = np.mean((decoded[offset] - source[truth.start + offset]) ** 2)
            assert 10 * np.log10(255 ** 2 / mse) > 30  # re-encoding at crf 12 is near lossless


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"filters": {"max_text_area": 0.05}, "cuts": {"min_clip_seconds": 3}}))
    config = update_config(CurateConfig(), load_config_file(str(path)), str(path))
    update_config(config, parse_assignment("motion.fps=4"), "--set")
    update_config(config, parse_assignment("clip.model_path=/models/clip"), "--set")
    assert (config.filters.max_text_area, config.cuts.min_clip_seconds, config.motion.fps, config.clip.model_path) == \
        (0.05, 3, 4, "/models/clip")
    toml = tmp_path / "c.toml"
    toml.write_text("[text]\nenabled = false\n")
    assert update_config(CurateConfig(), load_config_file(str(toml)), str(toml)).text.enabled is False
    with pytest.raises(ValueError, match=r"c.json \[filters\]: unknown setting 'max_txt'"):
        update_config(CurateConfig(), {"filters": {"max_txt": 1}}, str(path))
    with pytest.raises(ValueError, match="expected section.field=value"):
        parse_assignment("max_text_area=1")
    with pytest.raises(ValueError, match="clip.model_path is required"):
        CurateConfig().validate()


def test_fingerprint_ignores_filters():
    a, b = CurateConfig(), CurateConfig()
    b.filters.max_text_area = 0.01
    assert a.fingerprint() == b.fingerprint()
    b.motion.fps = 4
    assert a.fingerprint() != b.fingerprint()
