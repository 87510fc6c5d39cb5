"""Camera-motion clips with exactly known labels, and the figures that say whether a model follows them.

Clips: a square crop window moves over a real photograph (svd_fast.train.real_footage's virtual
camera, here never touching the photo's edge, so the motion is exactly the label's):
  pan_left / pan_right / pan_up / pan_down  the camera turns that way: the picture slides the
                                            other way, by `shift` output pixels per frame
                                            (pan_left: content moves right, flow +x);
  zoom_in / zoom_out                        the window shrinks / grows by a constant factor per
                                            frame: the picture is magnified by `zoom` per frame
                                            (> 1 zooming in: flow divergence > 0);
  static                                    the window stays put.
The paper trains one LoRA per class on such clips (section 4.3.1, App. D.4.2: horizontal pans,
zooms, static).

`measure_motion` samples held-out photos with and without a LoRA and reports, per LoRA scale,
the issue's targets: sign agreement of the mean horizontal (vertical) flow for pans, of the flow
divergence for zooms, the flow magnitude against the base model's for static, and the first-frame
PSNR against the base model's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np

from svd_fast.camera_start import PAN_DIRECTIONS

MOTIONS = ("pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out", "static")
PAN_FLOW = PAN_DIRECTIONS
"""direction of the content's flow (x, y) in the frame when the camera pans that way (the sampler's
camera moves, svd_fast.camera_start, use the same convention)"""
ZOOM_SIGN = {"zoom_in": 1, "zoom_out": -1}
"""sign of the flow divergence"""


@dataclasses.dataclass(frozen=True)
class CameraClip:
    """A labelled clip: frames (T, size, size, 3) uint8 and the exact per-frame motion in the frame."""

    motion: str
    frames: np.ndarray
    flow: tuple[float, float]
    """content displacement (x, y) in output pixels per frame (pans; 0 otherwise)"""
    zoom: float
    """content magnification per frame (zooms; 1 otherwise)"""


def check_motion(motion: str) -> str:
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
    return motion


def camera_clip(photo: np.ndarray, motion: str, frames: int, size: int, rng: np.random.Generator,
                shift: tuple[float, float] = (1.0, 2.5), zoom: tuple[float, float] = (1.03, 1.07)) -> CameraClip:
    """One clip of `motion` over `photo` (H, W, 3) uint8, speed drawn from `shift` (pixels per frame)
    or `zoom` (magnification per frame). The window's whole path stays inside the photo."""
    from svd_fast.train.real_footage import PanSpec, photo_pan_video

    check_motion(motion)
    h, w = photo.shape[:2]
    short = min(h, w)
    fps = 1.0  # one frame per "second": PanSpec's rates are then per frame
    flow, magnification, velocity, log_rate = (0.0, 0.0), 1.0, (0.0, 0.0), 0.0
    if motion in PAN_FLOW:
        px = float(rng.uniform(*shift))
        direction = PAN_FLOW[motion]
        flow = (direction[0] * px, direction[1] * px)
        velocity = (-flow[0] / size, -flow[1] / size)  # window sides per frame, against the content's flow
    elif motion in ZOOM_SIGN:
        magnification = float(rng.uniform(*zoom)) ** ZOOM_SIGN[motion]
        log_rate = -math.log(magnification)  # the window side shrinks as the picture is magnified
    sides = [math.exp(log_rate * t) for t in range(frames)]
    travel = [abs(v) * (frames - 1) for v in velocity]  # window sides travelled (pans keep their side)
    # the largest starting window whose path fits: widest extent (1 + travel) x max side <= photo
    fit = min((w / short) / (max(sides) * (1 + travel[0])), (h / short) / (max(sides) * (1 + travel[1])))
    window = float(min(0.8, fit * 0.98) * rng.uniform(0.75, 1.0))
    if window * short < size / 2:
        raise ValueError(f"photo of {w}x{h} is too small for {frames} frames of {motion} at {size} px")
    centre = []
    side = window * short  # pixels, at t = 0
    for extent, v in ((w, velocity[0]), (h, velocity[1])):
        lo = side * max(sides) / 2 + max(0.0, -v) * side * (frames - 1)
        hi = extent - side * max(sides) / 2 - max(0.0, v) * side * (frames - 1)
        centre.append(float(rng.uniform(lo, max(lo, hi))) / extent)
    spec = PanSpec(seconds=frames / fps, fps=fps, window=window, centre=(centre[0], centre[1]), velocity=velocity,
                   zoom=log_rate)
    video = np.stack(photo_pan_video(photo, spec, size)[:frames])
    return CameraClip(motion, video, flow, magnification)


def write_clips(folder: Path, photos: dict[str, np.ndarray], motions, clips_per_photo: int, frames: int, size: int,
                fps: int, seed: int = 0, zoom: tuple[float, float] = (1.03, 1.07), motion_px: float | None = None) -> int:
    """Write clips of each motion over each photo as `<motion>/<photo>_<k>.mp4` (+ `.json` with the
    fps and the label), for svd_fast.train's 'folder' data source; existing clips are kept (a
    folder holds one `zoom` range: magnification per frame of zoom clips, see camera_clip).
    motion_px: written as the clips' `motion_px`, the motion micro-conditioning they train with
    (svd_fast.train.data) instead of their measured flow; e.g. static clips at the sampling default bucket.
    Returns the number of clips in the folder's motions."""
    from svd_fast.checkpoints.io import write_json
    from svd_fast.curate.video import encode_mp4

    count = 0
    for motion in motions:
        out = Path(folder) / check_motion(motion)
        out.mkdir(parents=True, exist_ok=True)
        for name, photo in sorted(photos.items()):
            for k in range(clips_per_photo):
                path = out / f"{name}_{k:02d}.mp4"
                count += 1
                if path.exists():
                    continue
                rng = np.random.default_rng([seed, k, MOTIONS.index(motion), *name.encode()])
                clip = camera_clip(photo, motion, frames, size, rng, zoom=zoom)
                label = {"fps": fps, "motion": motion, "flow": clip.flow, "zoom": clip.zoom}
                write_json(path.with_suffix(".json"), label if motion_px is None else {**label, "motion_px": motion_px})
                tmp = path.with_suffix(".tmp.mp4")
                tmp.write_bytes(encode_mp4(clip.frames, fps=fps, crf=10))  # near-lossless: the motion is the label
                tmp.replace(path)
    return count


# ------------------------------------------------------------------------------------ measuring
def motion_of(path) -> str:
    """The motion class named in a LoRA file's name (e.g. camera_lora_pan_left.safetensors)."""
    found = [m for m in MOTIONS if re.search(rf"(^|[^a-z]){m}([^a-z]|$)", Path(path).stem)]
    if len(found) != 1:
        raise ValueError(f"{path}: the file name must name one motion of {', '.join(MOTIONS)}")
    return found[0]


def flow_figures(video: np.ndarray) -> dict:
    """Mean flow (x, y), mean magnitude and mean divergence of a video (T, H, W, 3) in [0, 1]."""
    from svd_fast.train.video_metrics import flows, mean_divergence

    fields = flows(video)
    return {"flow_x": float(np.mean([f[..., 0].mean() for f in fields])),
            "flow_y": float(np.mean([f[..., 1].mean() for f in fields])),
            "magnitude": float(np.mean([np.linalg.norm(f, axis=-1).mean() for f in fields])),
            "divergence": mean_divergence(video)}


def measure_motion(pipe, lora_path, images: dict, seeds, scales, motion: str | None = None, **sample_args) -> dict:
    """The LoRA's motion figures on `images` ({name: (3, H, W) in [0, 1]}), for each seed and scale.

    Returns {"motion", "pairs", "scales": {scale: figures}}; figures: `sign_agreement` (fraction of
    (image, seed) pairs whose mean flow along the pan (pans) or divergence (zooms) has the label's
    sign), `mean_along` (that mean flow / divergence, signed so the label's direction is positive),
    `flow_ratio` (mean flow magnitude over the base model's, static), and the first-frame PSNR
    with the LoRA and without (`first_frame_psnr`, `base_first_frame_psnr`, `first_frame_drop_db`).
    sample_args go to the pipeline (height, width, num_frames, num_inference_steps, ...).
    """
    import torch

    from svd_fast.train.video_metrics import first_frame_psnr

    motion = check_motion(motion or motion_of(lora_path))
    pipe.set_progress_bar_config(disable=True)

    def sample(image, seed):
        return pipe(image, generator=torch.Generator().manual_seed(seed), output_type="np", **sample_args).frames[0]

    def along(figures):
        return along_motion(figures, motion)

    base = {}
    for name, image in images.items():
        for seed in seeds:
            video = sample(image, seed)
            base[name, seed] = {**flow_figures(video), "psnr": first_frame_psnr(video, image.permute(1, 2, 0).numpy())}
    adapter = pipe.load_lora_weights(lora_path, adapter_name="measured")
    results = {}
    try:
        for scale in scales:
            pipe.set_adapters([adapter], [scale])
            rows = []
            for name, image in images.items():
                for seed in seeds:
                    video = sample(image, seed)
                    rows.append({**flow_figures(video), "psnr": first_frame_psnr(video, image.permute(1, 2, 0).numpy()),
                                 "base": base[name, seed]})
            results[float(scale)] = _summarise(rows, along)
    finally:
        pipe.delete_adapters([adapter])
    return {"motion": motion, "pairs": len(base), "seeds": list(seeds), "images": list(images), "scales": results}


def along_motion(figures: dict, motion: str) -> float:
    """flow_figures' motion along `motion`: the mean flow along a pan (px/frame) or the divergence of a
    zoom, signed so that the motion's own direction is positive (0 for static)."""
    if motion in PAN_FLOW:
        dx, dy = PAN_FLOW[motion]
        return dx * figures["flow_x"] + dy * figures["flow_y"]
    return ZOOM_SIGN.get(motion, 0) * figures["divergence"]


def _summarise(rows: list[dict], along) -> dict:
    finite = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
    base_psnr = [r["base"]["psnr"] for r in rows if math.isfinite(r["base"]["psnr"])]
    return {
        "sign_agreement": float(np.mean([along(r) > 0 for r in rows])),
        "mean_along": float(np.mean([along(r) for r in rows])),
        "base_mean_along": float(np.mean([along(r["base"]) for r in rows])),
        "flow_ratio": float(np.mean([r["magnitude"] for r in rows]) / max(np.mean([r["base"]["magnitude"] for r in rows]), 1e-9)),
        "mean_flow": float(np.mean([r["magnitude"] for r in rows])),
        "first_frame_psnr": float(np.mean(finite)) if finite else float("inf"),
        "base_first_frame_psnr": float(np.mean(base_psnr)) if base_psnr else float("inf"),
        "first_frame_drop_db": float(np.mean(base_psnr) - np.mean(finite)) if finite and base_psnr else 0.0,
    }


def targets_met(figures: dict, motion: str) -> dict:
    """The issue's targets for one scale's figures (see measure_motion)."""
    met = {"first_frame_within_1db": figures["first_frame_drop_db"] <= 1.0}
    if motion == "static":
        met["flow_at_most_30pct_of_base"] = figures["flow_ratio"] <= 0.3
    else:
        met["sign_agreement_at_least_90pct"] = figures["sign_agreement"] >= 0.9
    return met


def placement(path: Path, targets) -> str:
    """Which layers the LoRA file at `path` sits on, in words, with its count of Linear and conv layers."""
    from svd_fast.adapters import describe_targets, read_file

    tensors, _ = read_file(path)
    downs = [v for k, v in tensors.items() if k.endswith(".lora_A")]
    linear = sum(1 for v in downs if v.ndim == 2)
    rank = downs[0].shape[0] if downs else 0
    return (f"a rank-{rank} LoRA on {describe_targets(tuple(targets))} of the svd_fast default model "
            f"({linear} Linear layers, {len(downs) - linear} convolutions)")


def card(path: Path, motion: str, measured: dict, training: dict) -> str:
    """MODEL_CARD.md text for a camera-motion LoRA: its training and its measured figures."""
    quantity = {"pan": "mean flow along the pan (px/frame)", "zoom": "mean flow divergence (1/frame)"}.get(
        motion.split("_")[0])
    directed = quantity is not None  # static has no direction: no sign and no signed quantity
    head = ["scale", *(["sign agreement", quantity + " (base model)"] if directed else []), "flow vs base",
            "first-frame PSNR (base) dB", "targets met"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scale, f in measured["scales"].items():
        met = ", ".join(k for k, ok in targets_met(f, motion).items() if ok) or "none"
        signed = [f"{f['sign_agreement']:.2f}", f"{f['mean_along']:+.3f} ({f['base_mean_along']:+.3f})"] if directed else []
        cells = [f"{scale:g}", *signed, f"{f['flow_ratio']:.2f}",
                 f"{f['first_frame_psnr']:.1f} ({f['base_first_frame_psnr']:.1f})", met]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        f"# Camera-motion LoRA: {motion}", "",
        f"`{path.name}`: {placement(path, training['targets'])}, trained to move the camera as `{motion}` "
        f"(training/recipes/camera_lora.py). Load it with "
        f"`pipe.load_lora_weights('{path.name}', scale=1.0)` or `python -m svd_fast.sample --lora {path.name}:1.0`.", "",
        "## Training", "",
        "```json", json.dumps(training, indent=2, sort_keys=True), "```", "",
        "## Measured (held-out photos, never trained on)", "",
        f"{measured['pairs']} (image, seed) pairs: images {', '.join(measured['images'])}, seeds {measured['seeds']}. "
        "Sign agreement: fraction of pairs whose mean flow along the pan (pans) or mean divergence (zooms) has the "
        "label's sign; flow vs base: mean flow magnitude with the LoRA over without (static target <= 0.3).", "",
        *rows, ""])
