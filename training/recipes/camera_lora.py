"""A camera-motion LoRA for the default model (paper section 4.3.1, App. D.4.2: LoRAs in the temporal
attention, rank 16, trained on clips of one camera motion).

    python training/recipes/camera_lora.py --motion pan_left --base svd_fast/assets/default_model \
        --out svd_fast/assets/camera_loras [--steps 800] [--rank 16] [--targets all_linear] [--lr 1e-3] [--threads 2] \
        [--zoom 1.03 1.07] [--image-fraction 0] [--motion-bucket 127]

Defaults are those of the shipped pan LoRAs; the shipped static LoRA is `--motion static --targets temporal
--motion-bucket 127 --lr 3e-4`. The paper's placement (temporal attention only, 800 steps
at lr 3e-4) did not learn a pan on this small model: pan_right moved the held-out photos by +0.060
px/frame against the base model's own +0.045, sign agreement 0.75 as the base's. Temporal attention
mixes frames at one spatial position and cannot shift content by itself in a UNet this shallow; rank 16
on every Linear layer (spatial and temporal attention, feed-forwards) at lr 1e-3 did: sign agreement
1.0 at scales 0.5/1/1.5 with the flow growing with the scale (+0.12/+0.24/+0.29 px/frame).

Zoom does not reach issue 15's targets with any placement tried, static only when trained at the
sampling default's motion bucket (2026-12-01, 800 steps,
rank 16, 1 thread, 12 held-out (photo, seed) pairs; figures at scales 0.5 / 1 / 1.5, base in brackets):

    run                                   zoom_in divergence sign    mean divergence (base -0.0058)   first frame drop dB
    all_linear (before), 1600 steps       0.25 / 0.17 / 0.42         -0.005 / -0.005 / -0.007          0.0 / 0.3 / 1.2
    all_linear_conv                       0.17 / 0.25 / 0.17         -0.004 / -0.004 / -0.005         -0.1 / 0.0 / 0.5
    all_linear_conv, zoom 1.08-1.15       0.25 / 0.42 / 0.33         -0.005 / -0.004 / -0.006          0.3 / 1.1 / 2.3
    all_linear_conv, lr 3e-3              0.25 / 0.33 / 0.25         -0.005 / -0.004 / -0.010          0.3 / 1.7 / 11.0
    zoom_out all_linear_conv              0.75 / 0.67 / 0.75         +0.004 / +0.004 / +0.004 (base +0.006)  0.0 / 0.5 / 1.6

    static: flow vs base / first frame drop dB
    all_linear (before)                   0.69 / 0.46 / 0.40         1.6 / 4.2 / 5.8
    temporal_attention                    0.85 / 0.66 / 0.50        -0.1 / 0.8 / 2.6
    temporal (attention + temporal convs) 0.75 / 0.47 / 0.43         0.3 / 2.0 / 3.5
    all_linear_conv, image fraction 0.3   0.61 / 0.40 / 0.52         1.4 / 3.8 / 4.7
    temporal, --motion-bucket 127         0.23 / 0.23 / 0.25         0.3 / 0.9 / 1.8   (shipped to 2026-12-03)
    the same, lr 5e-4 (2026-12-03)        0.24 / 0.23 / 0.27         0.4 / 0.9 / 1.3
    the same, lr 3e-4 (2026-12-03)        0.24 / 0.22 / 0.24         0.2 / 0.6 / 0.9   (shipped)
    (the last three re-measured on the base with its decoder colour fine-tune: 1.0 dB at scale 1 for the first)

Conv adapters (the position information of this UNet is in its zero-padded 3x3 convs) did not make a
zoom learnable: the training clips diverge by +0.09..+0.25 per frame, the LoRAs move the held-out
videos' divergence by at most +0.002. Sampled videos show why: the base model re-generates every
frame after the first as a blurred version of the picture rather than moving it (its flow-warped
PSNR is 22.7 dB against 39 for true clips, MODEL_CARD.md), and the zoom LoRAs add more of that
dissolving, not a magnification. Static clips measure no flow, so they train at motion bucket 0,
where the base model already hardly moves (0.20 px/frame against 0.90 at 127, MODEL_CARD.md): the
LoRA learnt little about bucket 127, where it is sampled, and only blurred the later frames, costing
first-frame PSNR. `--motion-bucket 127` trains the clips at the sampling default instead: on the
temporal attention and temporal convs ('temporal') the flow drops to 0.23x and the frames keep their
detail; at lr 1e-3 the first frame fell 1.0 dB at scale 1 (the target's edge), at the paper's 3e-4 only
0.6 dB at the same flow (0.22x), within 1 dB at every scale (the shipped static LoRA; the three rates
were compared on these held-out figures, there being no other held-out photos).

Why zoom does not learn (2026-12-02, 1 thread; 12 held-out pairs, pure noise, 16 steps, guidance
1 -> 3 as the cards unless said): the measure is sound (true zoom
clips of the held-out photos through the VAE: divergence +0.037..+0.089 for zoom_in, -0.019..-0.084
for zoom_out, right sign in 16/16 clips, static 0.0000), and the earlier figures were taken from pure
noise (base -0.0058, reproduced). The base model's own divergence is biased negative (-0.0058 from
pure noise, -0.0015 from the default sigma-3 start, -0.0036 / -0.0021 from sigma 10 / 5 with frame 0
held): its later frames dissolve, which Farneback reads as a slight contraction (zoom_out's 0.67-0.75
is that bias). Not even the whole UNet learns a zoom: full fine-tunes ('full' trainable) on the zoom
clips, 400 steps at lr 3e-4 (speeds 1.03-1.07), 400 at 1e-3 with noise N(2.0, 1.0), and 1800 at 3e-4
with one fixed speed (1.05, a deterministic target) at bucket 127, move the held-out divergence by
+0.002..+0.004 (1800 steps: sign 0.25, -0.0014; from sigma 5 with frame 0 held after 600 steps:
sign 0.58, +0.0001 against the base's -0.0021), also on the training photos themselves (sign 0.58,
+0.0018 against -0.0013). A denoiser probe (x0-prediction of noised true zoom clips of the held-out
photos, latent std 1.23, mean squared error) shows what the 1800 steps did learn: at sigma 20 the
first frame's error fell from 0.42 to 0.23 (the conditioning latent copied in place), the later
frames' only from 1.17 to 1.13, and their decoded divergence stayed at +0.003 (base +0.004); a
deterministic zoom would let them approach the first frame's error. A LoRA at these settings
(all_linear_conv, zoom 1.05, --motion-bucket 127, 800 steps, lr 1e-3): sign 0.33 / 0.33 at scales 1 /
1.5, divergence -0.003 / -0.004, first frame -0.2 / -0.9 dB; from sigma 5 with frame 0 held 0.67 / 0.42
(base 0.42), divergence 0.000 / -0.001 (base -0.002). So the UNet learns the in-place copy of the
conditioning latent, and the pan LoRAs a uniform shift (translation-equivariant, what 3x3 convs and attention without
position embeddings do), but not the position-dependent warp of a zoom (displacement proportional to
the distance from the centre), for which this UNet has no position input beyond zero padding. Adding
one did not help, so that is not shown to be the cause: a learned position embedding added after
conv_in (zero-initialised, trained in the same 600-step full fine-tune) gave the same figures (sign
0.33, divergence -0.0028 against -0.0027), and 2 coordinate input channels trained from scratch did
not lower a zoom regression's error either (README, LoRA adapters and motion modules). A fix needs the model or its
training, not an adapter recipe.

The zoom the default model does make comes from the start of sampling instead (svd_fast.camera_start:
every frame starts from the input zoomed k times, noised to sigma 3). A zoom_in LoRA trained for that
start (all_linear_conv, 800 steps, lr 1e-3, --motion-bucket 127, --noise 0 1: the sigmas below the
start's 3) and measured with it (`--camera zoom_in:1.05 --keep-first-frame --sample-steps 8
--max-guidance 1`, 12 pairs, 2026-12-04, Xeon with AMX) gave divergence +0.038 / +0.037 / +0.036 at
scales 0.5 / 1 / 1.5 against +0.039 for the base with the same start (sign 1.00 for both): the start
makes the zoom, the adapter adds nothing, so no zoom LoRA ships.
Nor did noise that moves with the camera (camera_start.warped_noise, Go-with-the-Flow's way of
controlling motion, where a fine-tune teaches the model to follow the noise): from pure noise the base
model already zooms with it (divergence +0.015, sign 12 of 12, against -0.006 with plain noise), and a
zoom_in LoRA trained on 1.05x clips with their noise warped the same way (800 steps, all_linear_conv,
lr 1e-3) lowered that to +0.012 / +0.008 / +0.007 at scales 0.5 / 1 / 1.5 (2026-12-04).

1. clips: a crop window moving over each training photograph of the default model (its held-out
   photos excluded), labels exact (svd_fast.train.camera_motion), at the model's size and frames;
2. a LoRA trained on them with svd_fast.train (trainable 'lora', the base frozen; the stage-3
   noise of the default model) on the layers --targets names (a preset of svd_fast.adapters.PRESETS,
   or comma-separated presets and fnmatch patterns; `conv:<pattern>` selects convolutions, so
   all_linear_conv adds every spatial and temporal conv to all_linear); --image-fraction trains
   that share of the samples as stills (svd_fast.train.data: independent frames, temporal layers
   bypassed), which holds the adapted spatial layers to the base's pictures; --zoom sets the zoom
   clips' magnification per frame (each range gets its own clip folder);
3. `<out>/camera_lora_<motion>.safetensors` and `<out>/camera_lora_<motion>.md` (the card), with the
   figures of svd_fast.train.camera_motion.measure_motion on the held-out photos.
Each part is skipped when its output exists (the training resumes from its checkpoints).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from default_model import FRAMES, HIGH, held_out_photos, training_media  # noqa: E402

from svd_fast.adapters import PRESETS, LoRAConfig  # noqa: E402
from svd_fast.train import camera_motion  # noqa: E402
from svd_fast.train.data import DataConfig  # noqa: E402
from svd_fast.train.objective import ObjectiveConfig  # noqa: E402
from svd_fast.train.recipe import OptimConfig, Recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLIPS_PER_PHOTO = 8
SEEDS, SCALES = (0, 1, 2), (0.5, 1.0, 1.5)
ZOOM = (1.03, 1.07)
"""magnification per frame of the zoom clips (camera_motion.camera_clip)"""
SAMPLING = dict(height=HIGH, width=HIGH, num_frames=FRAMES, num_inference_steps=16)


def training_photos() -> dict:
    """RGB arrays of the default model's training photographs (never its held-out ones)."""
    from svd_fast.real_media import fetch
    from svd_fast.train.real_footage import load_photo

    return {name: load_photo(fetch(source)) for name, source in sorted(training_media().items()) if source.kind == "photo"}


def write_training_clips(folder: Path, motions, clips_per_photo: int, fps: int, zoom=ZOOM, motion_px=None) -> int:
    return camera_motion.write_clips(folder, training_photos(), motions, clips_per_photo, FRAMES, HIGH, fps, zoom=zoom,
                                     motion_px=motion_px)


def base_config(base: Path):
    from svd_fast.checkpoints import load_components

    return load_components(base)["config"]


NOISE = (1.0, 1.6)
"""(mean, std) of ln sigma in training: the default model's stage-3 noise"""


def part_recipe(name: str, trainable: str, base: Path, clips: Path, run: Path, steps: int, config, lr: float,
                image_fraction: float = 0.0, lora: LoRAConfig | None = None, export_final: bool = False,
                noise: tuple[float, float] = NOISE) -> Recipe:
    """Training on camera clips from the base model (its VAE and image encoder frozen), only the
    `trainable` part of its UNet ('lora', or 'full' etc. of svd_fast.train.trainable: a full fine-tune
    tells whether the UNet can learn a motion at all); ln sigma ~ N(noise); one checkpoint kept."""
    return Recipe(
        name=name, output_dir=str(run), model=config, components=str(base), init_from=str(base),
        data=DataConfig(source="folder", path=str(clips), num_frames=FRAMES, height=HIGH, width=HIGH,
                        image_fraction=image_fraction),
        objective=ObjectiveConfig(p_mean=noise[0], p_std=noise[1]), optim=OptimConfig(lr=lr, warmup_steps=min(50, steps // 4)),
        trainable=trainable, lora=lora or LoRAConfig(), batch_size=2, max_steps=steps,
        checkpoint_every=max(1, min(250, steps)), keep_checkpoints=1, log_every=10, export_final=export_final,
    )


def last_loss(run: Path) -> float | None:
    """The last logged loss of a run (also when a resumed run had no step left to train)."""
    records = [json.loads(line) for line in open(run / "log.jsonl") if '"loss"' in line]
    return records[-1]["loss"] if records else None


def export_fp16(trained: Path, adapter: Path) -> None:
    """The adapter as shipped: fp16 tensors (half the size; measured in that form), same metadata."""
    from svd_fast.adapters import read_file
    from svd_fast.checkpoints.io import save_safetensors

    tensors, metadata = read_file(trained)
    save_safetensors({k: v.half() for k, v in tensors.items()}, adapter, metadata=metadata)


def shown(path: Path) -> str:
    """A path as the card shows it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def parse_targets(text: str) -> tuple[str, ...]:
    return (text,) if text in PRESETS else tuple(p for p in text.split(",") if p)


def sampling_args(args) -> dict:
    """The pipeline arguments the LoRA is measured with: pure noise (image_init_sigma None) and the
    pipeline's guidance 1 -> 3 unless told otherwise (the cards of the shipped LoRAs)."""
    extra = {"image_init_sigma": args.image_init_sigma} if args.image_init_sigma is not None else {}
    if args.keep_first_frame:
        extra["keep_first_frame"] = True
    if args.camera:
        extra["camera"] = args.camera
    return dict(SAMPLING, num_inference_steps=args.sample_steps, max_guidance_scale=args.max_guidance, **extra)


def run(args) -> dict:
    from svd_fast.checkpoints.io import write_json, write_text
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.trainer import train

    motion = camera_motion.check_motion(args.motion)
    work, out, base = Path(args.workdir), Path(args.out), Path(args.base)
    config = base_config(base)
    timings = {}
    start = time.perf_counter()
    zoom = tuple(args.zoom)
    clips = work / ("clips" if zoom == ZOOM else f"clips_zoom_{zoom[0]:g}_{zoom[1]:g}")
    motion_px = None
    if args.motion_bucket is not None:  # px/frame that motion_bucket maps to this bucket
        from svd_fast.train.data import MOTION_FULL_SCALE

        motion_px = args.motion_bucket / 255 * MOTION_FULL_SCALE * HIGH
        clips = clips.with_name(f"{clips.name}_bucket_{args.motion_bucket:g}")
    count = write_training_clips(clips, [motion], args.clips_per_photo, config.fps, zoom, motion_px)
    timings["clips_s"] = round(time.perf_counter() - start, 1)
    lora = LoRAConfig(rank=args.rank, alpha=float(args.rank), targets=parse_targets(args.targets))
    recipe = part_recipe(f"camera-lora-{motion}", "lora", base, clips / motion, work / f"run_{motion}", args.steps,
                         config, args.lr, image_fraction=args.image_fraction, lora=lora, noise=tuple(args.noise))
    start = time.perf_counter()
    train(recipe, resume=True)
    timings["train_s"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    adapter = out / f"camera_lora_{motion}.safetensors"
    checkpoint = Path(recipe.output_dir) / "checkpoints"
    export_fp16(checkpoint / (checkpoint / "latest").read_text().strip() / "lora.safetensors", adapter)
    start = time.perf_counter()
    pipe = SVDPipeline.from_pretrained(base, torch_dtype=torch.float32)
    sampling = sampling_args(args)
    measured = camera_motion.measure_motion(pipe, adapter, held_out_photos(), args.seeds, args.scales, motion, **sampling)
    timings["measure_s"] = round(time.perf_counter() - start, 1)
    training = {"motion": motion, "base": shown(base), "clips": count, "clips_per_photo": args.clips_per_photo,
                "steps": args.steps, "last_loss": last_loss(Path(recipe.output_dir)), "rank": lora.rank, "alpha": lora.alpha,
                "targets": list(lora.targets), "lr": args.lr, "batch": recipe.batch_size,
                "image_fraction": args.image_fraction, "motion_bucket": args.motion_bucket or "measured", **({"zoom_per_frame": list(zoom)} if "zoom" in motion else {}),
                "noise": f"ln sigma ~ N({recipe.objective.p_mean}, {recipe.objective.p_std}^2)",
                "threads": torch.get_num_threads(), "timings_s": timings,
                "measured_sampling": {k: v for k, v in sampling.items() if k not in ("height", "width")}}
    write_text(out / f"camera_lora_{motion}.md", camera_motion.card(adapter, motion, measured, training))
    result = {"training": training, "measured": measured}
    write_json(work / f"summary_{motion}.json", result)
    return result


def refresh_card(args) -> dict:
    """Re-measure a shipped adapter (--out/camera_lora_<motion>.safetensors) on --base and rewrite its
    card's figures, keeping the training record the card holds: for a change of the base model that
    needs no retraining (the default model's decoder colour fine-tune, 2026-12-03)."""
    from svd_fast.checkpoints.io import write_text
    from svd_fast.pipeline import SVDPipeline

    motion = camera_motion.check_motion(args.motion)
    adapter = Path(args.out) / f"camera_lora_{motion}.safetensors"
    card_path = adapter.with_suffix(".md")
    training = json.loads(card_path.read_text().split("```json\n", 1)[1].split("```", 1)[0])
    pipe = SVDPipeline.from_pretrained(args.base, torch_dtype=torch.float32)
    measured = camera_motion.measure_motion(pipe, adapter, held_out_photos(), args.seeds, args.scales, motion,
                                            **sampling_args(args))
    write_text(card_path, camera_motion.card(adapter, motion, measured, training))
    return measured


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--motion", required=True, choices=camera_motion.MOTIONS)
    p.add_argument("--base", default=str(REPO / "svd_fast" / "assets" / "default_model"))
    p.add_argument("--out", required=True, help="folder for the adapter file and its card")
    p.add_argument("--workdir", help="clips and training runs (default: runs/camera_lora)")
    p.add_argument("--steps", type=int, default=800, help="optimizer steps (the paper: 5000, at SVD's scale)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="all_linear",
                   help=f"a preset ({', '.join(PRESETS)}) or comma-separated presets and fnmatch patterns of "
                        "layer names (Linear layers; 'conv:<pattern>' for convolutions)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="adapter learning rate (the default model itself trained at 2e-4 to 1e-3)")
    p.add_argument("--zoom", type=float, nargs=2, default=list(ZOOM), metavar=("LO", "HI"),
                   help="magnification per frame of the zoom clips, drawn uniformly from [LO, HI]")
    p.add_argument("--image-fraction", type=float, default=0.0,
                   help="share of training samples that are stills (independent frames, temporal layers bypassed)")
    p.add_argument("--motion-bucket", type=float, default=None,
                   help="train every clip at this motion bucket (e.g. 127, the sampling default) instead of the one "
                        "its measured flow gives (static clips: 0, where the base model hardly moves already)")
    p.add_argument("--clips-per-photo", type=int, default=CLIPS_PER_PHOTO)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="measurement seeds")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES), help="measured LoRA scales")
    p.add_argument("--sample-steps", type=int, default=SAMPLING["num_inference_steps"])
    p.add_argument("--image-init-sigma", type=float, default=None,
                   help="measure sampling from the image noised to this sigma (default: pure noise, as the cards)")
    p.add_argument("--keep-first-frame", action="store_true", help="measure with frame 0 held to the input")
    p.add_argument("--camera", help="measure the LoRA and the base alike with this camera start (svd_fast.camera_start, "
                                    "e.g. zoom_in:1.05; from --image-init-sigma, default 3)")
    p.add_argument("--max-guidance", type=float, default=3.0, help="measurement guidance at the last frame (1 -> this)")
    p.add_argument("--noise", type=float, nargs=2, default=list(NOISE), metavar=("P_MEAN", "P_STD"),
                   help="training noise: ln sigma ~ N(P_MEAN, P_STD^2) (default: the default model's stage 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--refresh-card", action="store_true",
                   help="no training: re-measure the adapter in --out on --base and rewrite its card's figures")
    args = p.parse_args(argv)
    args.workdir = args.workdir or str(REPO / "runs" / "camera_lora")
    torch.set_num_threads(args.threads)
    result = refresh_card(args) if args.refresh_card else run(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
