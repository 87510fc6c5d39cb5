"""The whole run on Ray Data: manifest, errors, shards, summary; resume after kill -9; CLI errors."""
import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pandas as pd
import pytest

from svd_fast.curate.__main__ import build_config, main, parse_args
from svd_fast.curate.config import CurateConfig
from svd_fast.curate.pipeline import list_sources, run
from svd_fast.curate.probe import probe_video
from svd_fast.curate.shards import iter_shards

REQUIRED = ["source", "start_frame", "end_frame", "fps", "motion", "text_area", "aesthetic", "clip_score", "caption",
            "kept", "reason"]


def cli_settings(tiny_clip):
    model, head = tiny_clip
    return ["--set", f"clip.model_path={model}", "--set", f"clip.aesthetic_head={head}",
            "--set", "text.ocr_short_side=240", "--set", "cuts.min_clip_seconds=1.5",
            "--set", "shards.clips_per_shard=2"]


def config_for(tiny_clip, *extra):
    return build_config(parse_args(["unused", "--out", "unused", *cli_settings(tiny_clip), *extra]))


@pytest.fixture(scope="module")
def full_run(pipeline_inputs, tiny_clip, ray_address, tmp_path_factory):
    """One uninterrupted run on the session's Ray cluster."""
    out = str(tmp_path_factory.mktemp("full_run"))
    summary = run(pipeline_inputs[0], out, config_for(tiny_clip))
    return out, summary


def test_manifest_matches_the_videos(full_run, pipeline_inputs):
    out, _ = full_run
    folder, truth, broken = pipeline_inputs
    manifest = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    assert set(REQUIRED) <= set(manifest.columns)
    assert sorted(manifest["source"].unique()) == sorted(truth)
    early = manifest["reason"].str.match(r"too_short|transition_|keyframe_snap")
    for name, video in truth.items():
        rows = manifest[manifest["source"] == name].sort_values("start_frame")
        # Every frame is in exactly one row: clips and the spans dropped before scoring.
        assert rows["start_frame"].iloc[0] == 0 and rows["end_frame"].iloc[-1] == video.num_frames
        assert (rows["start_frame"].to_numpy()[1:] == rows["end_frame"].to_numpy()[:-1]).all()
        scored = rows[~early[rows.index]]
        assert len(scored) == sum(c.end - c.start >= 18 for c in video.clips)
        for _, row in scored.iterrows():
            # A scored clip lies inside one shot of the truth (2 frames of slack at each end).
            assert any(c.start - 2 <= row["start_frame"] and row["end_frame"] <= c.end + 2 for c in video.clips), row
            assert row["fps"] == 12.0
    short = manifest[manifest["reason"] == "too_short"]
    assert "b.mp4" in list(short["source"]) and short[["motion", "clip_score"]].isna().all(axis=None)
    scored = manifest[~early]
    assert np.isfinite(scored[["motion", "text_area", "aesthetic", "clip_score"]].to_numpy()).all()
    assert (scored["caption"].str.len() > 0).all()
    text_clip = manifest[(manifest["source"] == "b.mp4") & (manifest["clip_index"] == 0)].iloc[0]
    assert text_clip["text_area"] > 0.07 and "text_over_max" in text_clip["reason"]
    assert (manifest["kept"] == (manifest["reason"] == "")).all() and manifest["kept"].any()
    errors = pd.read_parquet(os.path.join(out, "errors.parquet"))
    assert dict(zip(errors["source"], errors["reason"])).keys() == broken.keys()
    for _, error in errors.iterrows():
        assert broken[error["source"]] in error["reason"]


def test_kept_clips_pass_every_threshold(full_run):
    out, summary = full_run
    manifest = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    kept = manifest[manifest["kept"]]
    for rule in summary["thresholds"]:
        values = kept[rule["column"]]
        assert (values >= rule["threshold"]).all() if rule["keep_above"] else (values <= rule["threshold"]).all()
    dropped = manifest[~manifest["kept"] & ~manifest["reason"].str.match(r"too_short|transition_|keyframe_snap")]
    assert len(dropped) and all(r in {"low_motion", "low_aesthetic", "low_clip_score", "much_text", "text_over_max"}
                                for reasons in dropped["reason"] for r in reasons.split(";"))


def test_shards_hold_the_kept_clips(full_run):
    out, summary = full_run
    manifest = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    kept = manifest[manifest["kept"]]
    paths = sorted(glob.glob(os.path.join(out, "shards", "*.tar")))
    assert len(paths) == summary["counts"]["shards"]["shards"] == -(-len(kept) // 2)
    samples = list(iter_shards(paths))
    assert [s["__key__"] for s in samples] == list(kept["key"])
    for sample, (_, row) in zip(samples, kept.iterrows()):
        assert sample["json"]["source"] == row["source"] and sample["json"]["caption"] == row["caption"]
        with av.open(io.BytesIO(sample["mp4"])) as container:
            assert sum(1 for _ in container.decode(video=0)) == row["end_frame"] - row["start_frame"]


def test_summary_counts_and_histograms(full_run, pipeline_inputs):
    out, summary = full_run
    manifest = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    counts = summary["counts"]
    assert counts["sources"] == {"found": 8, "unreadable": 4, "with_clips": 4}
    early = manifest["reason"].str.match(r"too_short|transition_|keyframe_snap")
    assert counts["cuts"]["clips"] == len(manifest)
    assert counts["cuts"]["too_short"] == (manifest["reason"] == "too_short").sum() >= 1
    assert counts["cuts"]["transitions"] == manifest["reason"].str.startswith("transition_").sum() >= 2
    assert counts["kept"] == manifest["kept"].sum()
    assert counts["scored"]["motion"] == counts["scored"]["clip_score"] == (~early).sum()
    assert json.load(open(os.path.join(out, "summary.json"))) == summary
    with open(os.path.join(out, "summary.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_new_thresholds_reuse_the_scores(full_run, pipeline_inputs, tiny_clip, tmp_path):
    """Changing only a filter re-uses every cached score: no Ray job, same scores, more clips kept."""
    out = str(tmp_path / "out")
    shutil.copytree(os.path.join(full_run[0], ".work"), os.path.join(out, ".work"))
    summary = run(pipeline_inputs[0], out, config_for(tiny_clip, "--set", "filters.clip_score_drop_lowest=0",
                                                      "--disable", "shards"), use_ray=False)
    before = pd.read_parquet(os.path.join(full_run[0], "manifest.parquet"))
    after = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    pd.testing.assert_frame_equal(before.drop(columns=["kept", "reason"]), after.drop(columns=["kept", "reason"]))
    assert "low_clip_score" not in summary["counts"]["filters"] and after["kept"].sum() > before["kept"].sum()


def test_without_ray_the_scores_are_the_same(full_run, pipeline_inputs, tiny_clip, tmp_path):
    """--no-ray runs the same per-clip functions in-process: identical scores and captions."""
    out = str(tmp_path / "local")
    run(pipeline_inputs[0], out, config_for(tiny_clip, "--disable", "shards"), limit=1, use_ray=False)
    local = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    full = pd.read_parquet(os.path.join(full_run[0], "manifest.parquet"))
    assert list(local["source"].unique()) == ["a.mp4"]  # --limit 1: the first source in sorted order
    columns = ["start_frame", "end_frame", "motion", "text_area", "aesthetic", "clip_score", "caption", "caption_video"]
    pd.testing.assert_frame_equal(local[columns], full[full["source"] == "a.mp4"][columns].reset_index(drop=True))


def test_sources_are_listed_recursively_by_extension(pipeline_inputs):
    sources = list_sources(pipeline_inputs[0], CurateConfig(), limit=None)
    assert [s.name for s in sources] == ["a.mp4", "audio_only.mp4", "b.mp4", "d.mp4", "empty.mp4", "garbage.mp4",
                                         "nested/c.mp4", "truncated.mp4"]
    assert [s.name for s in list_sources(pipeline_inputs[0], CurateConfig(), limit=2)] == ["a.mp4", "audio_only.mp4"]


def _run_and_kill_after_the_first_source(command: list[str], out: str, log_path) -> dict:
    """Start the curate CLI, kill -9 its process group as soon as one source's results are cached;
    returns {cache file: mtime} of what was left."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=os.path.dirname(log_path), stdout=log, stderr=log,
                                   start_new_session=True)
    finished = []
    deadline = time.time() + 150
    while time.time() < deadline and process.poll() is None:
        finished = [p for p in glob.glob(os.path.join(out, ".work", "*.json")) if json.load(open(p))["rows"]]
        if finished:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and anything it started: a hard crash
    process.wait()
    assert finished, open(log_path).read()[-3000:]
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, ".work", "*.json"))}


def test_resume_after_kill_gives_the_same_manifest(full_run, pipeline_inputs, tiny_clip, ray_address, tmp_path):
    folder = pipeline_inputs[0]
    # The kill must land while some sources are still unfinished. The poll races the workers, and on a
    # loaded machine the other sources can finish between two polls: then the attempt is repeated.
    for attempt in range(3):
        out = str(tmp_path / f"out{attempt}")
        command = [sys.executable, "-m", "svd_fast.curate", folder, "--out", out, "--address", ray_address,
                   *cli_settings(tiny_clip)]
        cached = _run_and_kill_after_the_first_source(command, out, tmp_path / f"killed{attempt}.log")
        videos_cached = sum(bool(json.load(open(p))["rows"]) for p in cached)
        if videos_cached < 4:
            break
    assert 1 <= videos_cached < 4 and not os.path.exists(os.path.join(out, "manifest.parquet"))

    run(folder, out, config_for(tiny_clip))
    for path, mtime in cached.items():
        assert os.stat(path).st_mtime_ns == mtime  # finished sources were not redone
    with open(os.path.join(full_run[0], "manifest.parquet"), "rb") as a, open(os.path.join(out, "manifest.parquet"), "rb") as b:
        assert a.read() == b.read()
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(full_run[0], "errors.parquet")),
                                  pd.read_parquet(os.path.join(out, "errors.parquet")))


def test_cli_errors(tmp_path, capsys, pipeline_inputs, tiny_clip):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "INPUT_DIR" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([pipeline_inputs[0], "--out", str(blocker / "sub")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert main([pipeline_inputs[0], "--out", str(tmp_path / "o")]) == 2
    message = capsys.readouterr().err
    assert "clip.model_path is required" in message and "--disable clip" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "o"), "--disable", "clip"]) == 2
    assert "holds no videos" in capsys.readouterr().err


def test_runs_without_clip_weights_and_says_so(pipeline_inputs, tmp_path, capsys):
    """No CLIP folder: --disable clip runs everything else and the summary names what is missing."""
    out = str(tmp_path / "no_clip")
    assert main([pipeline_inputs[0], "--out", out, "--disable", "clip", "--disable", "shards", "--no-ray",
                 "--limit", "1", "--set", "text.ocr_short_side=240", "--set", "cuts.min_clip_seconds=1.5"]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["stages"]["clip"].startswith("off: no CLIP aesthetic") and summary["stages"]["motion"] == "on"
    assert "stage clip off" in capsys.readouterr().err
    manifest = pd.read_parquet(os.path.join(out, "manifest.parquet"))
    scored = manifest[manifest["reason"] == ""]
    assert len(scored) and scored["aesthetic"].isna().all() and scored["clip_score"].isna().all()
    assert np.isfinite(scored["motion"]).all() and (scored["caption"].str.len() > 0).all()


def test_two_node_cluster_survives_losing_a_node(full_run, pipeline_inputs, tiny_clip, tmp_path):
    """A real two-node Ray cluster (head + a second `ray start --address` node with its own CPU,
    resources and temp dir); the second node's raylet is killed mid-run. Ray retries the lost
    tasks, and where the driver cannot recover the same command resumes from the per-source
    cache: the manifest equals the single-node run's."""
    from svd_fast.curate.cluster import LocalCluster

    out = str(tmp_path / "out")
    # A 2-CPU head: with 1-CPU nodes the 1-CPU tasks need --set ray.task_cpus=0.5 (see RayConfig).
    with LocalCluster(nodes=[2, 1]) as cluster:
        command = [sys.executable, "-m", "svd_fast.curate", pipeline_inputs[0], "--out", out,
                   "--address", cluster.address, *cli_settings(tiny_clip)]
        with open(tmp_path / "run.log", "w") as log:
            driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=cluster.env,
                                      start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            if any(json.load(open(p))["rows"] for p in glob.glob(os.path.join(out, ".work", "*.json"))):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the run ended before a node was lost: " + open(tmp_path / "run.log").read()[-2000:]
        cluster.nodes[1].raylet().kill()  # the node is gone: its workers, actors and objects with it
        try:
            recovered = driver.wait(timeout=60) == 0
        except subprocess.TimeoutExpired:
            recovered = False
        if not recovered:
            # Measured: Ray Data's streaming executor can wait forever on an actor lost with the
            # node. The driver is stopped and the same command resumes on the surviving node.
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            rerun = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=300)
            assert rerun.returncode == 0, rerun.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(full_run[0], "manifest.parquet")),
                                  pd.read_parquet(os.path.join(out, "manifest.parquet")))
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(full_run[0], "errors.parquet")),
                                  pd.read_parquet(os.path.join(out, "errors.parquet")))
