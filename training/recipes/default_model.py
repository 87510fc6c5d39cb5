"""The embedded default model: a small SVD trained from scratch by svd_fast on procedural videos.

    python training/recipes/default_model.py [--workdir runs/default_model] [--out svd_fast/assets/default_model]

Every part is trained here, in order (each step is skipped when its output exists, and the UNet
stages resume from their checkpoints, so an interrupted run continues where it stopped):
  1. data: procedural multi-scene videos (moving, rotating, scaling textured shapes over textured
     backgrounds, camera pans and zooms) rendered to mp4, then curated with svd_fast.curate (cut
     detection splits scenes, the motion filter drops the most static quarter) into shards;
  2. the temporal VAE on procedural clips, then its latent scaling factor;
  3. the CLIP image tower (contrastive across frames of a clip + colour-thumbnail probe);
  4. the UNet in the paper's three stages: image pretraining (temporal path bypassed), video
     pretraining on the curated shards, high-quality fine-tuning at a higher resolution with EMA;
  5. export (fp16 safetensors, diffusers layout) and evaluation of samples on held-out
     procedural images, written into MODEL_CARD.md.
Budget: at most 90 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from svd_fast.checkpoints.diffusers import SAMPLING_DEFAULT_TYPES
from svd_fast.config import ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig
from svd_fast.train.data import BatchPlan, DataConfig, build_dataset, micro_batch_loader
from svd_fast.train.objective import ObjectiveConfig
from svd_fast.train.recipe import OptimConfig, Recipe

REPO = Path(__file__).resolve().parents[2]
FRAMES = 8
LOW, HIGH = 48, 64  # stage 1-2 and stage 3 resolution (pixels, square)
HELD_OUT = 10_000_000  # procedural clip indices from here on are never trained on
VAE_BATCH, VAE_CLIP_FRAMES = 2, 4  # clips per VAE step, frames per clip

CONFIG = SVDConfig(
    unet=UNetConfig(block_out_channels=(32, 64, 128), attention_levels=(True, True, True), num_attention_heads=(1, 2, 4),
                    layers_per_block=1, cross_attention_dim=64, addition_time_embed_dim=32,
                    projection_class_embeddings_input_dim=96, num_frames=FRAMES, norm_num_groups=8),
    # 8 GroupNorm groups (not SVD's 32): with one channel per group a norm erases each channel's
    # mean, and the 32-wide layers could not carry a frame's colour.
    vae=VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
    image_encoder=ImageEncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                     patch_size=32, image_size=224, projection_dim=64),
    # Sampling defaults the main command uses; the highest motion bucket because the blur of the
    # tiny VAE damps visible motion (MODEL_CARD.md measures it).
    num_frames=FRAMES, num_inference_steps=16, height=HIGH, width=HIGH, fps=8, motion_bucket_id=255, max_guidance_scale=2.0,
)
SAMPLING_DEFAULTS = tuple(SAMPLING_DEFAULT_TYPES)  # the SVDConfig fields a saved model carries as sampling defaults


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Steps of each part (scale them together with --scale for quick trials)."""

    videos: int = 200
    vae_steps: int = 2500
    encoder_steps: int = 400
    stage1_steps: int = 1000
    stage2_steps: int = 3000
    stage3_steps: int = 1500

    def scaled(self, factor: float) -> "Schedule":
        return Schedule(**{k: max(2, int(round(v * factor))) for k, v in dataclasses.asdict(self).items()})


def procedural(height: int, width: int, frames: int = FRAMES, **changes) -> DataConfig:
    return DataConfig(source="procedural", num_frames=frames, height=height, width=width, **changes)


def clip_batches(data: DataConfig, batch: int, seed: int):
    """Endless (B, T, 3, H, W) batches of a dataset, as the UNet trainer would draw them."""
    dataset = build_dataset(data)
    plan = BatchPlan(len(dataset), batch, 1, 1, 0, seed)
    for _, _, items in micro_batch_loader(dataset, plan, 0):
        yield items["frames"]


# ------------------------------------------------------------------------------------------ data
def render_source_videos(folder: Path, count: int) -> None:
    """Multi-scene mp4s: three procedural clips of 2.5-4 s each, joined by hard cuts, 12 fps."""
    from svd_fast.curate.video import encode_mp4
    from svd_fast.train.procedural import random_clip_spec, render_frame

    folder.mkdir(parents=True, exist_ok=True)
    for v in range(count):
        path = folder / f"video_{v:04d}.mp4"
        if path.exists():
            continue
        rng = np.random.default_rng(v)
        frames = []
        for scene in range(3):
            spec = dataclasses.replace(random_clip_spec(1_000_000 + 3 * v + scene), fps=12.0)
            for t in range(int(rng.integers(30, 48))):
                image, _ = render_frame(spec, t, 128, 128)
                frames.append(((image.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8))
        tmp = path.with_suffix(".tmp.mp4")
        tmp.write_bytes(encode_mp4(frames, fps=12, crf=14))
        os.replace(tmp, path)


def curate(videos: Path, out: Path) -> Path:
    """svd_fast.curate without the model-based stages (no CLIP / caption models here): cut
    detection, motion score and the motion filter, shards."""
    from svd_fast.curate.__main__ import main as curate_main

    shards = out / "shards"
    if not any(shards.glob("*.tar")):
        code = curate_main([str(videos), "--out", str(out), "--no-ray", "--disable", "clip", "--disable", "captions",
                            "--disable", "text", "--set", "cuts.min_clip_seconds=1.5", "--set", "shards.short_side=128"])
        if code != 0:
            raise RuntimeError(f"curation failed with exit code {code}")
    return shards


# ------------------------------------------------------------------------------ VAE and encoder
def train_components(work: Path, schedule: Schedule) -> Path:
    """VAE + image encoder trained, saved with a (random, unused) UNet as a diffusers folder."""
    from svd_fast.checkpoints import save_components
    from svd_fast.train.autoencoder import AutoencoderTraining, calibrate_scaling_factor, reconstruction_psnr, train_vae
    from svd_fast.train.image_encoder import ImageEncoderTraining, train_image_encoder
    from svd_fast.unet import VideoUNet

    folder = work / "components"
    if (folder / "model_index.json").is_file():
        return folder
    report = {}
    # Whole frames at the resolution the model samples at: GroupNorm statistics span the frame,
    # so crops would train the VAE on other statistics than it sees in use.
    # 4-frame clips: the temporal decoder's norms and convs then see clips closer to the 8 frames
    # it decodes at sampling time than pairs of frames would be.
    vae = train_vae(CONFIG.vae, clip_batches(procedural(HIGH, HIGH, frames=VAE_CLIP_FRAMES), VAE_BATCH, seed=1),
                    AutoencoderTraining(steps=schedule.vae_steps, lr=2e-3, warmup_steps=50))
    held_out = torch.stack([build_dataset(procedural(HIGH, HIGH))[(HELD_OUT + i, i)]["frames"] for i in range(8)])
    scale = calibrate_scaling_factor(vae, held_out)
    vae.config = dataclasses.replace(vae.config, scaling_factor=scale)
    report["vae"] = {"steps": schedule.vae_steps, "scaling_factor": scale,
                     "held_out_psnr_db": reconstruction_psnr(vae, held_out)}
    encoder = train_image_encoder(CONFIG.image_encoder, clip_batches(procedural(LOW, LOW, frames=4), 32, seed=2),
                                  ImageEncoderTraining(steps=schedule.encoder_steps))
    config = dataclasses.replace(CONFIG, vae=vae.config)
    save_components({"config": config, "unet": VideoUNet(config.unet), "vae": vae, "image_encoder": encoder}, folder)
    (work / "components_report.json").write_text(json.dumps(report, indent=2))
    return folder


def trained_config(components: Path) -> SVDConfig:
    from svd_fast.checkpoints import load_components

    return load_components(components)["config"]


# ----------------------------------------------------------------------------------- UNet stages
def stage_recipes(work: Path, components: Path, shards: Path, config: SVDConfig, schedule: Schedule) -> list[Recipe]:
    """The paper's three stages at this model's scale (noise shifted up as resolution grows)."""
    common = dict(model=config, components=str(components), seed=0, log_every=25, checkpoint_every=200,
                  keep_checkpoints=1, export_final=True)
    stage1 = Recipe(
        name="default-stage1-image", output_dir=str(work / "stage1"), **common,
        data=procedural(LOW, LOW, frames=4, image_fraction=1.0),
        objective=ObjectiveConfig(p_mean=-1.2, p_std=1.0),
        optim=OptimConfig(lr=1e-3, warmup_steps=100), trainable="spatial", batch_size=8, max_steps=schedule.stage1_steps,
    )
    stage2 = Recipe(
        name="default-stage2-video", output_dir=str(work / "stage2"), **common, init_from=str(work / "stage1"),
        init_weights="model",
        data=DataConfig(source="shards", path=str(shards), num_frames=FRAMES, height=LOW, width=LOW, frame_strides=(1, 2)),
        objective=ObjectiveConfig(p_mean=-0.6, p_std=1.2),
        optim=OptimConfig(lr=5e-4, warmup_steps=100), batch_size=4, max_steps=schedule.stage2_steps, ema_decay=0.995,
    )
    stage3 = Recipe(
        name="default-stage3-finetune", output_dir=str(work / "stage3"), **common, init_from=str(work / "stage2"),
        data=procedural(HIGH, HIGH, frame_strides=(1, 2)),
        objective=ObjectiveConfig(p_mean=0.0, p_std=1.4),
        optim=OptimConfig(lr=2e-4, warmup_steps=50), batch_size=2, max_steps=schedule.stage3_steps, ema_decay=0.99,
    )
    return [stage1, stage2, stage3]


# --------------------------------------------------------------------------- export + evaluation
def export(stage3: Path, components: Path, out: Path) -> None:
    """fp16 weights (EMA UNet) in the diffusers layout, replacing `out` atomically."""
    from svd_fast.checkpoints import load_components, save_components

    parts = load_components(stage3 / "final", use_ema=True, dtype=torch.float16)
    parts["config"] = dataclasses.replace(parts["config"], **{k: getattr(CONFIG, k) for k in SAMPLING_DEFAULTS})
    save_components(parts, out, overwrite=True)


def evaluate(model: Path, sample_path: Path | None, count: int = 12, steps: int = 16) -> dict:
    """Sample videos from held-out procedural first frames; quality figures (svd_fast.train.video_metrics).
    The first clip's ground truth and sample are saved side by side to sample_path (when given)."""
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.data import motion_bucket
    from svd_fast.train.procedural import random_clip_spec, render_clip
    from svd_fast.train.video_metrics import video_report

    pipe = SVDPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    rows, truth_rows, round_trip_rows = [], [], []
    for i in range(count):
        spec = random_clip_spec(HELD_OUT + 1000 + i)
        frames, flow = render_clip(spec, FRAMES, HIGH, HIGH)
        image = ((frames[0] + 1) / 2).clamp(0, 1)
        truth = ((frames + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        motion = motion_bucket(float(flow.norm(dim=1).mean()), HIGH)
        video = pipe(image, height=HIGH, width=HIGH, num_frames=FRAMES, num_inference_steps=steps, fps=int(spec.fps),
                     motion_bucket_id=motion, min_guidance_scale=1.0, max_guidance_scale=2.0,
                     generator=torch.Generator().manual_seed(i), output_type="np").frames[0]
        rows.append(video_report(video, image.permute(1, 2, 0).numpy()))
        truth_rows.append(video_report(truth, truth[0]))
        # The true clip through the VAE alone: the best this VAE lets any UNet reach.
        with torch.no_grad():
            round_trip = pipe.vae.decode(pipe.vae.encode(frames), num_frames=FRAMES).float()
        round_trip = ((round_trip + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        round_trip_rows.append(video_report(round_trip, truth[0]))
        if i == 0 and sample_path is not None:
            from svd_fast.video_io import save_video

            save_video(np.concatenate([truth, video], axis=2), sample_path, fps=spec.fps)

    def mean(table, key):
        values = [r[key] for r in table if np.isfinite(r[key])]
        return float(np.mean(values)) if values else float("nan")

    keys = ("first_frame_psnr", "mean_flow", "warp_consistency")
    return {"samples": count, "sampler_steps": steps, "model": {k: mean(rows, k) for k in keys},
            "ground_truth_clips": {k: mean(truth_rows, k) for k in keys},
            "vae_round_trip": {k: mean(round_trip_rows, k) for k in keys}}


def _loss_summary(run_dir: Path) -> dict:
    """First and last logged losses of a stage (means of the first and last tenth of the records:
    single steps at batch 2-8 and random sigma are noisy)."""
    records = [json.loads(line) for line in open(run_dir / "log.jsonl") if '"loss"' in line]
    tenth = max(1, len(records) // 10)
    first, last = records[:tenth], records[-tenth:]
    return {"steps": records[-1]["step"], "first_loss": float(np.mean([r["loss"] for r in first])),
            "last_loss": float(np.mean([r["loss"] for r in last])),
            "samples_per_s": float(np.median([r["samples_per_s"] for r in records]))}


def write_model_card(out: Path, work: Path, summary: dict, config: SVDConfig) -> None:
    from svd_fast.checkpoints.io import write_text

    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*.safetensors")}
    counts = json.loads((work / "curated" / "summary.json").read_text())["counts"]
    components = json.loads((work / "components_report.json").read_text())["vae"]
    stages = {name: _loss_summary(work / name) for name in ("stage1", "stage2", "stage3")}
    m, gt, vae = (summary["metrics"][k] for k in ("model", "ground_truth_clips", "vae_round_trip"))
    sched = summary["schedule"]
    u = config.unet
    lines = [
        "# svd_fast default model", "",
        "A small image-to-video model with the architecture of Stable Video Diffusion (spatiotemporal UNet, "
        "temporal VAE, CLIP image tower, EDM v-prediction), trained from scratch by svd_fast on procedurally "
        "generated videos. It is the model `python -m svd_fast.sample` uses when no `--model` is given. It knows "
        "only its synthetic world: it is a working, testable default, not a general video model.", "",
        "## Use", "",
        "```", "python -m svd_fast.sample --image first_frame.png --out video.gif", "```", "",
        f"The model's sampling defaults (stored in `svd_fast_sampling.json`, used when a flag is not given): "
        f"{CONFIG.num_frames} frames at {CONFIG.width}x{CONFIG.height}, {CONFIG.num_inference_steps} Euler steps, fps "
        f"{CONFIG.fps}, motion bucket {CONFIG.motion_bucket_id}, guidance 1.0 -> {CONFIG.max_guidance_scale}.", "",
        f"Trained for {FRAMES} frames at {HIGH}x{HIGH} pixels (stage 1-2 at {LOW}x{LOW}); `--motion-bucket` (0-255) scales "
        f"the motion (255 = a mean flow of 5% of the frame height per frame); `--fps` 3-12 were seen in training.", "",
        "## Architecture and files", "",
        f"- UNet: widths {list(u.block_out_channels)}, attention at every level, heads {list(u.num_attention_heads)}, "
        f"{u.layers_per_block} ResBlock per level, cross-attention width {u.cross_attention_dim}, 8 input channels "
        "(noisy latent + conditioning latent), spatial and temporal layers blended by learned AlphaBlenders.",
        f"- VAE: SD-style encoder + temporal decoder, widths {list(config.vae.block_out_channels)} (8x downsampling, "
        f"4 latent channels), latent scaling factor {config.vae.scaling_factor:.4f} (calibrated: 1/std of latents).",
        f"- Image encoder: CLIP ViT ({config.image_encoder.num_hidden_layers} layers, width {config.image_encoder.hidden_size}, "
        f"patch {config.image_encoder.patch_size} at {config.image_encoder.image_size} px), projection {config.image_encoder.projection_dim}.",
        f"- Weights: fp16 safetensors in the diffusers layout, {sum(sizes.values()) / 1e6:.1f} MB in all "
        f"({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in sorted(sizes.items()))}).", "",
        "## Data", "",
        "Procedural clips (svd_fast.train.procedural): one to three textured shapes (disc, square, triangle, ellipse; "
        "stripes, checker, rings or noise fills) moving, rotating and scaling over a textured background, seen by a "
        "camera that pans and/or zooms; about 10% static clips; 6, 8 or 12 fps. The motion is known exactly (the "
        "renderer returns the optical flow), which sets the motion-bucket conditioning.",
        f"- Stage 2 data went through the curation pipeline (svd_fast.curate, model-free stages): {sched['videos']} "
        f"rendered source videos of three scenes joined by hard cuts -> {counts['cuts']['clips']} clips found by the "
        f"cut-detection cascade ({counts['cuts']['too_short']} too short), {counts['filters'].get('low_motion', 0)} dropped by "
        f"the static-clip motion filter, {counts['kept']} kept in webdataset shards.",
        "- Stage 1, stage 3, the VAE and the image encoder draw fresh procedural clips; evaluation uses held-out clip "
        "indices never seen in training.", "",
        "## Training recipe (training/recipes/default_model.py)", "",
        "| part | data | steps | batch | resolution | noise (ln sigma) | result |", "|---|---|---|---|---|---|---|",
        f"| VAE | procedural {VAE_CLIP_FRAMES}-frame clips | {sched['vae_steps']} | {VAE_BATCH} | {HIGH} | - | held-out reconstruction "
        f"{components['held_out_psnr_db']:.1f} dB PSNR at {HIGH} px |",
        f"| image encoder | procedural frame pairs | {sched['encoder_steps']} | 32 | {LOW} (to 224) | - | contrastive + colour probe |",
    ]
    for name, label, data, batch, res, noise in (
        ("stage1", "UNet stage 1: images (temporal path bypassed)", "procedural stills", 8, LOW, "N(-1.2, 1.0^2)"),
        ("stage2", "UNet stage 2: video pretraining", "curated shards", 4, LOW, "N(-0.6, 1.2^2)"),
        ("stage3", "UNet stage 3: high-quality fine-tune, EMA", "procedural", 2, HIGH, "N(0.0, 1.4^2)"),
    ):
        st = stages[name]
        lines.append(f"| {label} | {data} | {st['steps']} | {batch} | {res} | {noise} | loss {st['first_loss']:.3f} -> "
                     f"{st['last_loss']:.3f} |")
    lines += [
        "", "Losses are the EDM-weighted denoising loss (= MSE of the v-prediction), means over the first and last "
        "tenth of the logged steps; they depend on the stage's noise distribution, so compare them within a stage only. Conditioning dropout 10% (image embedding) and 10% (conditioning latent), noise augmentation "
        "of the conditioning frame ln sigma_aug ~ N(-3, 0.5^2), AdamW, one sigma per clip.", "",
        "## Measured quality", "",
        f"{summary['metrics']['samples']} held-out procedural first frames, {summary['metrics']['sampler_steps']} Euler steps, "
        f"guidance 1.0 -> 2.0, motion bucket from each clip's true motion, seed = clip number. Figures are means "
        f"(svd_fast.train.video_metrics); the ground-truth clips of the same first frames are the reference.", "",
        "| | first-frame PSNR vs input (dB) | mean optical flow (px/frame) | frame-to-frame consistency (flow-warped PSNR, dB) |",
        "|---|---|---|---|",
        f"| this model | {m['first_frame_psnr']:.1f} | {m['mean_flow']:.2f} | {m['warp_consistency']:.1f} |",
        f"| ground-truth clips through the VAE (the bound this VAE sets) | {vae['first_frame_psnr']:.1f} | "
        f"{vae['mean_flow']:.2f} | {vae['warp_consistency']:.1f} |",
        f"| ground-truth clips | (identical) | {gt['mean_flow']:.2f} | {gt['warp_consistency']:.1f} |", "",
        "`sample.gif` shows a held-out clip: ground truth (left) and the model's video from its first frame (right).", "",
        "## What it can and cannot do", "",
        f"- It starts from the input: the first generated frame is {m['first_frame_psnr']:.1f} dB from the input image, "
        f"and the true clips passed through the VAE alone reach {vae['first_frame_psnr']:.1f} dB. The tiny VAE sets this "
        "ceiling: the layout and large shapes survive as soft blobs, fine texture is lost, and colours collapse "
        "towards a green-purple axis (this VAE, trained for 10 minutes, reconstructs held-out frames at "
        f"{components['held_out_psnr_db']:.1f} dB; it is the part to improve first).",
        f"- It moves, less than the true clips: mean optical flow {m['mean_flow']:.2f} px/frame against "
        f"{vae['mean_flow']:.2f} for the true continuations through the VAE (blurred frames give the flow estimator "
        f"less to follow) and {gt['mean_flow']:.2f} at full detail. The change between its frames is motion the flow "
        f"explains: warped-frame PSNR {m['warp_consistency']:.1f} dB (true clips through the VAE: "
        f"{vae['warp_consistency']:.1f} dB).",
        "- It cannot handle natural images (it has never seen one), text, people, long or high-resolution videos, "
        "and it does not follow the input's exact motion (the first frame does not determine it).", "",
        "## Reproduce", "",
        "```", "python training/recipes/default_model.py --workdir runs/default_model --out svd_fast/assets/default_model", "```", "",
        f"Run time of the run that produced these weights: {summary['total_s'] / 60:.0f} min wall clock and "
        f"{summary['total_cpu_s'] / 60:.0f} CPU-minutes on the project's 2-core CPU machine ({summary['threads']} torch "
        "threads; the recipe's budget is 90 min). Per part (wall s / CPU s): "
        + ", ".join(f"{k} {summary['timings_s'][k]:.0f}/{summary['cpu_seconds'][k]:.0f}" for k in summary["timings_s"]) + ".",
    ]
    write_text(out / "MODEL_CARD.md", "\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------- the run
def run(work: Path, out: Path, schedule: Schedule) -> dict:
    from svd_fast.checkpoints.io import write_json
    from svd_fast.train.logs import setup_console_logging
    from svd_fast.train.trainer import train

    setup_console_logging(rank=0)
    work.mkdir(parents=True, exist_ok=True)
    # Time spent per part, summed over every invocation of this work folder: a resumed run
    # reports what the whole run cost, and parts skipped because they are done add nothing.
    times_file = work / "timings.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {"wall_s": {}, "cpu_s": {}}
    mark = [time.perf_counter(), _cpu_seconds()]

    def lap(name):
        now = [time.perf_counter(), _cpu_seconds()]
        for key, spent in (("wall_s", now[0] - mark[0]), ("cpu_s", now[1] - mark[1])):
            times[key][name] = round(times[key].get(name, 0.0) + spent, 1)
        mark[:] = now
        write_json(times_file, times)
        print(f"[default_model] {name} done: {times['wall_s'][name]} s ({times['cpu_s'][name]} CPU-s) in all", flush=True)

    render_source_videos(work / "videos", schedule.videos)
    shards = curate(work / "videos", work / "curated")
    lap("data")
    components = train_components(work, schedule)
    lap("vae_and_image_encoder")
    config = trained_config(components)
    for recipe in stage_recipes(work, components, shards, config, schedule):
        if not (Path(recipe.output_dir) / "final" / "model_index.json").is_file():
            train(recipe, resume=True)
        lap(recipe.name)
    export(work / "stage3", components, out)
    lap("export")
    metrics = evaluate(out, out / "sample.gif")
    lap("evaluation")
    summary = {"timings_s": times["wall_s"], "cpu_seconds": times["cpu_s"], "total_s": round(sum(times["wall_s"].values()), 1),
               "total_cpu_s": round(sum(times["cpu_s"].values()), 1), "threads": torch.get_num_threads(),
               "metrics": metrics, "schedule": dataclasses.asdict(schedule)}
    write_json(work / "summary.json", summary)
    write_model_card(out, work, summary, config)
    return summary


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (curation, loader workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=str(REPO / "runs" / "default_model"))
    p.add_argument("--out", default=str(REPO / "svd_fast" / "assets" / "default_model"))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step count (quick trials: 0.05)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads (default: every core; on a machine shared with other jobs 1 is faster)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary = run(Path(args.workdir), Path(args.out), Schedule().scaled(args.scale) if args.scale != 1 else Schedule())
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
