"""Curation on real footage: per-stage clips per second per core, and the cut detector's
precision/recall per transition kind and per cascade level on the labelled set.

Inputs are the real videos of svd_fast.real_media (the hand-labelled set in
tests/curate/data/labels.json). Each stage's plain per-clip function runs in this process on one
thread (torch, OpenCV and x264 limited to one), so clips/s here is clips/s per core. The cut
detector is scored on the real videos (hand-checked cuts), on real shots joined by rendered
transitions (the set the thresholds were tuned on) and on a held-out rendered video, with a
sweep of its main thresholds. With --ray the whole pipeline also runs end to end on one local
node (2 CPUs) and on a two-node cluster (1 + 1 CPUs, `ray start` processes).

    python bench/curate.py --json bench/results/curate-real-cpu-DATE.json [--clip base] [--ray]

The CLIP model has random weights in the real ViT-B/32 shape (--clip base) or ViT-L/14 (large),
so its cost is the real model's cost; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/kernels.py would shadow the
# `kernels` library that transformers and diffusers probe for: the repository root replaces it.
sys.path[0] = str(Path(__file__).resolve().parents[1])
from bench.harness import machine_info, write_json  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402

from svd_fast.curate.captions import build_captioner  # noqa: E402
from svd_fast.curate.clip_scores import ClipScorer  # noqa: E402
from svd_fast.curate.config import CaptionConfig, CurateConfig  # noqa: E402
from svd_fast.curate.cuts import find_clips  # noqa: E402
from svd_fast.curate.frames import caption_indices, decode_clip  # noqa: E402
from svd_fast.curate.motion import motion_score  # noqa: E402
from svd_fast.curate.probe import probe_video  # noqa: E402
from svd_fast.curate.shards import encode_clip  # noqa: E402
from svd_fast.curate import cut_eval  # noqa: E402
from svd_fast.curate.config import CutConfig  # noqa: E402
from svd_fast.curate.text import TesseractDetector, text_area  # noqa: E402

CLIP_SHAPES = {  # (hidden, layers, heads, patch, image size, projection) of the vision and text towers
    "tiny": dict(vision=(32, 2, 2, 8, 32), text=(32, 2, 2), projection=16),
    "base": dict(vision=(768, 12, 12, 32, 224), text=(512, 12, 8), projection=512),  # ViT-B/32
    "large": dict(vision=(1024, 24, 16, 14, 224), text=(768, 12, 12), projection=768),  # ViT-L/14
}


LABELS = Path(__file__).resolve().parents[1] / "tests" / "curate" / "data" / "labels.json"


def real_inputs(folder: str) -> list[str]:
    """The labelled real videos, linked into one input folder."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for video in cut_eval.load_real_set(str(LABELS)):
        link = os.path.join(folder, video.name + Path(video.path).suffix)
        os.symlink(video.path, link)
        paths.append(link)
    return paths


def pr_table(result: dict) -> dict:
    return {kind: {k: result[kind][k] for k in ("true", "found", "hits", "precision", "recall")}
            for kind in (*cut_eval.KINDS, "all")}


def cut_quality(tmp: str) -> dict:
    """P/R per kind on each labelled set, per cascade level, and a sweep of the main thresholds."""
    config = CutConfig()
    sets = {"real_hand_labelled": cut_eval.load_real_set(str(LABELS)),
            "rendered_tuning": cut_eval.transition_set(os.path.join(tmp, "rendered")),
            "rendered_held_out": cut_eval.transition_set(os.path.join(tmp, "held_out"), specs=cut_eval.HELD_OUT_VIDEOS)}
    start = time.perf_counter()
    for videos in sets.values():
        cut_eval.attach_features(videos, config)
    report = {"tolerance_frames": cut_eval.TOLERANCE, "feature_seconds": time.perf_counter() - start,
              "config": {k: v for k, v in config.__dict__.items()}}
    everything = [v for videos in sets.values() for v in videos]
    for name, videos in sets.items():
        result = cut_eval.score(videos, config)
        report[name] = {"videos": [v.name for v in videos], "per_kind": pr_table(result), "errors": result["errors"]}
    names = [level["name"] for level in config.levels] + ["edges"]
    report["per_level_all_sets"] = {name: pr_table(cut_eval.score(everything, config, levels=[name])) for name in names}
    tuning = sets["real_hand_labelled"] + sets["rendered_tuning"]
    sweep = []
    for field, values in [("cut_ratio", [2.0, 3.0, 4.0, 6.0, 10.0]), ("gradual_ratio", [1.5, 2.5, 4.0, 6.0]),
                          ("gradual_max_residual", [0.15, 0.25, 0.35, 0.5, 0.8]),
                          ("gradual_min_change", [0.06, 0.12, 0.2, 0.3])]:
        for value in values:
            trial = CutConfig()
            if field == "cut_ratio":
                trial.levels = [dict(level, ratio=value) if level["kind"] == "cut" else level for level in trial.levels]
            else:
                setattr(trial, field, value)
            result = cut_eval.score(tuning, trial)
            sweep.append({"setting": field, "value": value, "all": pr_table(result)["all"],
                          "cut": pr_table(result)["cut"]})
    report["threshold_sweep_on_tuning_sets"] = sweep
    return report
def save_random_clip(folder: str, size: str) -> str:
    """A CLIPModel + CLIPProcessor with random weights in the chosen shape."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    shape = CLIP_SHAPES[size]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in map(chr, range(33, 127)):
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    hidden, layers, heads, patch, image = shape["vision"]
    text_hidden, text_layers, text_heads = shape["text"]
    config = CLIPConfig(
        vision_config=dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, patch_size=patch, image_size=image),
        text_config=dict(hidden_size=text_hidden, intermediate_size=4 * text_hidden, num_hidden_layers=text_layers,
                         num_attention_heads=text_heads, vocab_size=49408, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        projection_dim=shape["projection"])
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image},
                                                                 crop_size={"height": image, "width": image}),
                              tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    processor.save_pretrained(folder)
    return folder


def stage_stats(name: str, seconds: list[float], clips: int) -> dict:
    total = sum(seconds)
    return {"stage": name, "clips": clips, "seconds": total, "clips_per_s_per_core": clips / total if total else None,
            "median_s": statistics.median(seconds), "min_s": min(seconds)}


def measure_stages(paths: list[str], config: CurateConfig, clip_path: str) -> list[dict]:
    """Every stage's plain function on every clip, timed separately, one thread."""
    timings: dict[str, list[float]] = {name: [] for name in
                                       ("probe", "cuts", "decode", "motion", "text", "captions", "clip", "shards")}
    detector, captioner = TesseractDetector(), build_captioner(config.captions)
    scorer = ClipScorer(clip_path, threads=1)
    clips = 0

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name].append(time.perf_counter() - start)
        return result

    for path in paths:
        info = timed("probe", probe_video, path)
        spans = [s for s in timed("cuts", find_clips, path, info, config.cuts) if not s.reason]
        for span in spans:
            clips += 1
            frames = timed("decode", decode_clip, path, span.start, span.end, info.pts[span.start], config.decode,
                           config.motion, info.fps)
            timed("motion", motion_score, frames.motion)
            timed("text", text_area, frames.key, detector, config.text.ocr_short_side)
            times = [(i - span.start) / info.fps for i in caption_indices(span.start, span.end, config.decode.caption_frames)]
            captions = timed("captions", captioner.captions, frames.key, frames.caption, times)
            timed("clip", scorer.score, frames.key, captions["caption"])
            timed("shards", encode_clip, path, span.start, span.end, info.pts[span.start], info.fps,
                  config.shards.short_side, config.shards.crf)
    # Probe and cuts run once per source: report them per clip produced.
    return [stage_stats(name, seconds, clips) for name, seconds in timings.items()]


def measure_ray(folder: str, out: str, config: CurateConfig, nodes: list[int]) -> dict:
    """End to end on one local node (`nodes` = [cpus]) or a `ray start` cluster of several."""
    import subprocess

    from svd_fast.curate.cluster import LocalCluster

    cpus = sum(nodes)
    start = time.perf_counter()
    if len(nodes) == 1:
        from svd_fast.curate.pipeline import run

        config.ray.num_cpus = nodes[0]
        summary = run(folder, out, config)
    else:
        with LocalCluster(nodes) as cluster:
            start = time.perf_counter()  # cluster start-up is not the pipeline's
            command = [sys.executable, "-m", "svd_fast.curate", folder, "--out", out, "--address", cluster.address,
                       "--set", f"clip.model_path={config.clip.model_path}", "--set", "ray.task_cpus=0.5"]
            subprocess.run(command, env=cluster.env, check=True, capture_output=True, timeout=900)
        import json

        summary = json.load(open(os.path.join(out, "summary.json")))
    seconds = time.perf_counter() - start
    clips = summary["counts"]["cuts"]["clips"]
    return {"nodes": nodes, "spans": clips, "seconds": seconds, "spans_per_s": clips / seconds,
            "spans_per_s_per_core": clips / seconds / cpus, "note": "includes Ray job start-up and model loading"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--clip", choices=sorted(CLIP_SHAPES), default="base")
    parser.add_argument("--ray", action="store_true", help="also time the whole pipeline on one and two Ray nodes")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "videos")
        paths = real_inputs(folder)
        config = CurateConfig()
        config.clip.model_path = save_random_clip(os.path.join(tmp, "clip"), args.clip)
        config.captions = CaptionConfig()  # the built-in captioner
        stages = measure_stages(paths, config, config.clip.model_path)
        cuts = cut_quality(tmp)
        ray_results = None
        if args.ray:
            ray_results = [measure_ray(folder, os.path.join(tmp, f"out{len(n)}"), config, n) for n in ([2], [1, 1])]
    result = {"benchmark": "curate", "machine": machine_info(), "load_average_at_start": load_at_start,
              "load_average_at_end": os.getloadavg(),
              "inputs": {"videos": [os.path.basename(p) for p in paths], "source": "svd_fast.real_media",
                         "clip_model": f"random weights, {args.clip} shape", "captioner": "built-in"},
              "stages": stages, "cut_detection": cuts, "ray_pipeline": ray_results}
    print(f"{'stage':<10}{'clips':>7}{'clips/s/core':>14}{'median ms':>11}{'min ms':>9}")
    for row in stages:
        print(f"{row['stage']:<10}{row['clips']:>7}{row['clips_per_s_per_core']:>14.2f}"
              f"{row['median_s'] * 1e3:>11.1f}{row['min_s'] * 1e3:>9.1f}")
    for name in ("real_hand_labelled", "rendered_tuning", "rendered_held_out"):
        table = cuts[name]["per_kind"]
        print(name, ", ".join(f"{k} P={v['precision']:.2f} R={v['recall']:.2f} ({v['hits']}/{v['true']})"
                              for k, v in table.items() if v["true"] or v["found"]))
    for row in ray_results or []:
        print(f"ray {row['nodes']}: {row['spans']} spans in {row['seconds']:.1f} s = "
              f"{row['spans_per_s_per_core']:.2f} spans/s/core")
    print(f"written to {write_json(args.json, result)}")


if __name__ == "__main__":
    main()
