"""A motion module for the default model, and the AnimateDiff demonstration that such a module
animates a spatial base it was not trained with.

    python training/recipes/motion_module.py --base svd_fast/assets/default_model --out DIR \
        [--steps 1000] [--spatial-steps 300] [--threads 2]

1. clips: camera moves of every class (svd_fast.train.camera_motion) over the default model's
   training photographs (its held-out photos excluded);
2. motion module: only the temporal layers train (trainable 'temporal': temporal ResBlocks,
   temporal transformers, frame-position embeddings, AlphaBlender mix factors), the spatial
   layers of the base stay frozen; written as DIR/motion_module.safetensors
   (svd_fast.save_motion_module: temporal tensors and the manifest of the base they fit);
3. a spatial base fine-tuned separately: the base's spatial layers only (trainable 'spatial'),
   on stills (image samples of the same clips: the temporal path is bypassed);
4. demonstration on the held-out photos: that spatial base with its temporal layers reset to a
   fresh initialisation (an image model with untrained temporal layers), then with the default
   model's motion module loaded, then with the module of step 2: mean flow (does it move?), warp
   consistency (is it motion, not flicker?) and first-frame PSNR against the input (does it keep
   the picture?), next to the default model's. (Fine-tuning in 'spatial' mode leaves the temporal
   layers as they were, so the spatial base with its own temporal layers and with the default
   model's module compute the same: the comparison that matters is against fresh layers.)
Written to DIR/demonstration.json and DIR/MOTION_MODULE.md. Parts whose output exists are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from default_model import held_out_photos  # noqa: E402
from camera_lora import SAMPLING, base_config, last_loss, part_recipe, write_training_clips  # noqa: E402

from svd_fast.train.camera_motion import MOTIONS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SEEDS = (0, 1)


def unet_of(model: Path):
    from svd_fast.pipeline import SVDPipeline

    return SVDPipeline.from_pretrained(model, torch_dtype=torch.float32).unet


def demonstrate(base: Path, spatial: Path, modules: dict[str, Path], steps: int, seeds=SEEDS) -> dict:
    """Mean flow and first-frame PSNR on the held-out photos for each way of assembling a model."""
    import svd_fast
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.video_metrics import video_report
    from svd_fast.unet import VideoUNet

    pipe = SVDPipeline.from_pretrained(spatial, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    photos = held_out_photos()

    def figures() -> dict:
        rows = []
        for name, image in photos.items():
            for seed in seeds:
                video = pipe(image, generator=torch.Generator().manual_seed(seed), output_type="np",
                             **dict(SAMPLING, num_inference_steps=steps)).frames[0]
                rows.append(video_report(video, image.permute(1, 2, 0).numpy()))
        return {key: float(np.mean([r[key] for r in rows if np.isfinite(r[key])])) for key in rows[0]}

    results = {"fine-tuned spatial base, its own temporal layers": figures()}
    torch.manual_seed(0)
    fresh = VideoUNet(pipe.unet.config)  # untrained temporal layers, as an image model lifted to video has
    pipe.unet.load_state_dict(svd_fast.motion_module.temporal_state_dict(fresh), strict=False)
    results["fine-tuned spatial base, fresh temporal layers"] = figures()
    for label, path in modules.items():
        svd_fast.load_motion_module(pipe, path)
        results[f"fine-tuned spatial base + {label}"] = figures()
    default = SVDPipeline.from_pretrained(base, torch_dtype=torch.float32)
    pipe.unet = default.unet
    results["the base model itself"] = figures()
    return results


def run(args) -> dict:
    import svd_fast
    from svd_fast.checkpoints.io import write_json, write_text
    from svd_fast.train.trainer import train

    work, out, base = Path(args.workdir), Path(args.out), Path(args.base)
    out.mkdir(parents=True, exist_ok=True)
    config = base_config(base)
    clips = work / "clips"
    count = write_training_clips(clips, MOTIONS, args.clips_per_photo, config.fps)
    timings = {}
    parts = {
        "temporal": part_recipe("motion-module", "temporal", base, clips, work / "temporal", args.steps, config, args.lr,
                                export_final=True),
        "spatial": part_recipe("spatial-base", "spatial", base, clips, work / "spatial", args.spatial_steps, config,
                               args.lr, image_fraction=1.0, export_final=True),
    }
    losses = {}
    for name, recipe in parts.items():
        start = time.perf_counter()
        train(recipe, resume=True)
        timings[f"train_{name}_s"] = round(time.perf_counter() - start, 1)
        losses[name] = last_loss(Path(recipe.output_dir))
    module = out / "motion_module.safetensors"
    svd_fast.save_motion_module(unet_of(work / "temporal" / "final"), module)
    default_module = work / "default_model_motion_module.safetensors"
    svd_fast.save_motion_module(unet_of(base), default_module)
    start = time.perf_counter()
    shown = demonstrate(base, work / "spatial" / "final",
                        {"the base model's motion module": default_module, "the motion module trained here": module},
                        args.sample_steps, args.seeds)
    timings["demonstration_s"] = round(time.perf_counter() - start, 1)
    result = {"clips": count, "steps": args.steps, "spatial_steps": args.spatial_steps, "last_losses": losses,
              "threads": torch.get_num_threads(), "timings_s": timings, "demonstration": shown}
    write_json(out / "demonstration.json", result)
    rows = [f"| {k} | {v['mean_flow']:.3f} | {v['warp_consistency']:.1f} | {v['first_frame_psnr']:.1f} |"
            for k, v in shown.items()]
    write_text(out / "MOTION_MODULE.md", "\n".join([
        "# Motion module of the svd_fast default model", "",
        "`motion_module.safetensors`: the temporal layers of the default model trained on camera moves over its "
        "training photographs, the spatial layers frozen (training/recipes/motion_module.py). Put it onto a UNet of "
        "the same architecture with `svd_fast.load_motion_module(unet_or_pipe, path)`.", "",
        "## Training", "", "```json", json.dumps({k: v for k, v in result.items() if k != "demonstration"}, indent=2),
        "```", "",
        f"## Demonstration (held-out photos, seeds {list(args.seeds)}, {args.sample_steps} Euler steps)", "",
        f"The spatial base: the default model's spatial layers fine-tuned {args.spatial_steps} steps on stills.", "",
        "Mean flow says whether it moves; warp consistency (PSNR of each frame against the next warped back along "
        "the flow) whether that is motion rather than flicker; first-frame PSNR whether it keeps the input.", "",
        "| model | mean flow (px/frame) | warp consistency (dB) | first-frame PSNR (dB) |", "|---|---|---|---|",
        *rows, ""]))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(REPO / "svd_fast" / "assets" / "default_model"))
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", help="clips and training runs (default: runs/motion_module)")
    p.add_argument("--steps", type=int, default=1000, help="steps of the temporal-only training")
    p.add_argument("--spatial-steps", type=int, default=300, help="steps of the separate spatial fine-tune")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--clips-per-photo", type=int, default=2, help="clips per photo and motion class")
    p.add_argument("--sample-steps", type=int, default=SAMPLING["num_inference_steps"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="demonstration seeds")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    args.workdir = args.workdir or str(REPO / "runs" / "motion_module")
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
