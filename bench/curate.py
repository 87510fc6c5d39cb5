"""Throughput of each curation stage: clips per second per core, on rendered synthetic videos.

Each stage's plain per-clip function runs in this process on one thread (torch, OpenCV and x264
limited to one), so clips/s here is clips/s per core. With --ray the whole pipeline also runs on
a local Ray cluster and its end-to-end clips/s (and per core) is reported.

    python bench/curate.py --json bench/results/curate.json [--videos 6] [--clip base] [--ray]

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
from svd_fast.curate.synthetic import Scene, render_video  # noqa: E402
from svd_fast.curate.text import TesseractDetector, text_area  # noqa: E402

SCENES = [
    Scene(3, "blue", "yellow", velocity=(2.0, 0.0)),
    Scene(3, "green", "white", fade_in=1),
    Scene(3, "white", "blue", text="BREAKING NEWS", text_scale=1.2),
    Scene(3, "purple", "yellow", velocity=(0.0, 1.5), fade_in=1),
    Scene(3, "orange", "blue", velocity=(-1.5, 0.5)),
]  # durations in seconds here, turned into frames at --fps
CLIP_SHAPES = {  # (hidden, layers, heads, patch, image size, projection) of the vision and text towers
    "tiny": dict(vision=(32, 2, 2, 8, 32), text=(32, 2, 2), projection=16),
    "base": dict(vision=(768, 12, 12, 32, 224), text=(512, 12, 8), projection=512),  # ViT-B/32
    "large": dict(vision=(1024, 24, 16, 14, 224), text=(768, 12, 12), projection=768),  # ViT-L/14
}


def render_inputs(folder: str, count: int, fps: float, width: int, height: int) -> list[str]:
    paths = []
    for index in range(count):
        order = SCENES[index % len(SCENES):] + SCENES[:index % len(SCENES)]
        scenes = [Scene(int(s.frames * fps), s.background, s.square, s.velocity, s.text, s.text_scale,
                        int(s.fade_in * fps) if position else 0) for position, s in enumerate(order)]
        paths.append(render_video(os.path.join(folder, f"v{index:03d}.mp4"), scenes, fps, width, height,
                                  seed=index).path)
    return paths


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


def measure_ray(folder: str, out: str, config: CurateConfig, num_cpus: int) -> dict:
    from svd_fast.curate.pipeline import run

    config.ray.num_cpus = num_cpus
    start = time.perf_counter()
    summary = run(folder, out, config)
    seconds = time.perf_counter() - start
    clips = summary["counts"]["cuts"]["clips"]
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds,
            "clips_per_s_per_core": clips / seconds / num_cpus, "num_cpus": num_cpus,
            "note": "includes Ray start-up and model loading"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--clip", choices=sorted(CLIP_SHAPES), default="base")
    parser.add_argument("--ray", action="store_true", help="also time the whole pipeline on a local Ray cluster")
    parser.add_argument("--ray-cpus", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "videos")
        paths = render_inputs(folder, args.videos, args.fps, args.width, args.height)
        config = CurateConfig()
        config.clip.model_path = save_random_clip(os.path.join(tmp, "clip"), args.clip)
        config.captions = CaptionConfig()  # the offline trivial captioner
        stages = measure_stages(paths, config, config.clip.model_path)
        ray_result = measure_ray(folder, os.path.join(tmp, "out"), config, args.ray_cpus) if args.ray else None
    result = {"benchmark": "curate", "machine": machine_info(),
              "inputs": {"videos": args.videos, "fps": args.fps, "size": [args.width, args.height],
                         "seconds_per_video": sum(s.frames + s.fade_in for s in SCENES), "clip_model": args.clip,
                         "captioner": "trivial"},
              "stages": stages, "ray_pipeline": ray_result}
    print(f"{'stage':<10}{'clips':>7}{'clips/s/core':>14}{'median ms':>11}{'min ms':>9}")
    for row in stages:
        print(f"{row['stage']:<10}{row['clips']:>7}{row['clips_per_s_per_core']:>14.2f}"
              f"{row['median_s'] * 1e3:>11.1f}{row['min_s'] * 1e3:>9.1f}")
    if ray_result:
        print(f"ray pipeline: {ray_result['clips']} clips in {ray_result['seconds']:.1f} s = "
              f"{ray_result['clips_per_s']:.2f} clips/s ({ray_result['clips_per_s_per_core']:.2f} per core)")
    print(f"written to {write_json(args.json, result)}")


if __name__ == "__main__":
    main()
