"""ComfyUI nodes over svd_fast: loader, accelerated sampler, LoRA, interpolation.

ComfyUI's contract (nodes.py and execution.py of ComfyUI): a node class has a classmethod
INPUT_TYPES returning {"required": {...}, "optional": {...}} of specs (TYPE,) or (TYPE, options),
where TYPE is "INT"/"FLOAT"/"STRING", a list of choices, or a type name another node returns;
RETURN_TYPES / RETURN_NAMES; FUNCTION, the method the executor calls with the inputs as keyword
arguments (after checking INT/FLOAT against "min"/"max" and choices against their list), returning
a tuple of len(RETURN_TYPES); and CATEGORY. IMAGE is a float32 tensor (B, H, W, C) in [0, 1].

The executor caches each node's outputs and may hand one output to several nodes, so no node
changes its inputs: the LoRA node returns a new SVDFastPipeline naming its adapters, and the
engine applies a request's adapters and speed mode when it samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from svd_fast.app.engine import LIMITS, SPEED_MODES, Engine, Lora, Settings, Speed, bundled_loras

PIPELINE = "SVD_FAST_PIPELINE"
CATEGORY = "svd_fast"
NO_LORA = "none"


@dataclass(frozen=True)
class SVDFastPipeline:
    """What flows between the nodes: the loaded model and the adapters to sample with."""

    engine: Engine
    loras: tuple[Lora, ...] = ()


def _int(name: str, default: int, **options) -> tuple:
    low, high = LIMITS[name]
    return ("INT", {"default": default, "min": low, "max": high, **options})


def _float(name: str, default: float, step: float) -> tuple:
    low, high = LIMITS[name]
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": step})


def _sampling_inputs(frames: int) -> dict:
    """The sampling widgets both samplers share; defaults are SVD's sampling defaults."""
    from svd_fast.config import SVDConfig

    svd = SVDConfig
    return {
        "seed": _int("seed", 23, control_after_generate=True),
        "steps": _int("steps", svd.num_inference_steps),
        "frames": _int("frames", frames),
        "fps": _int("fps", svd.fps),
        "motion_bucket_id": _int("motion_bucket", svd.motion_bucket_id),
        "min_cfg": _float("min_guidance", 1.0, 0.1),
        "max_cfg": _float("max_guidance", svd.max_guidance_scale, 0.1),
        "augmentation_level": _float("noise_aug", 0.02, 0.01),
    }


SPEED_INPUTS = {"speed_mode": (list(SPEED_MODES), {"default": "exact"}),
                "cache_interval": _int("cache_interval", Speed.cache_interval)}
# SVDPipeline's image_init_sigma (0 = from pure noise) and keep_first_frame; off as in SVD.
KEEP_IMAGE_INPUTS = {"image_init_sigma": _float("image_init_sigma", 0.0, 0.5),
                     "keep_first_frame": ("BOOLEAN", {"default": False})}
CAMERA_INPUT = {"camera": ("STRING", {"default": "", "tooltip": "camera moves without training, comma-separated: "
                                      "zoom_in, zoom_out, pan_left, pan_right, pan_up, pan_down, each with an "
                                      "optional :SPEED (svd_fast.camera_start); empty: none"})}


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """A ComfyUI IMAGE batch -> PIL images (the pipeline resizes PIL images with Lanczos, as the CLI)."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"expected an IMAGE batch (B, H, W, 3), got shape {tuple(images.shape)}")
    pixels = (images[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def to_image_batch(frames: np.ndarray) -> torch.Tensor:
    """Pipeline frames (B, T, H, W, 3) in [0, 1] -> one IMAGE batch (B*T, H, W, 3) float32."""
    return torch.from_numpy(np.ascontiguousarray(frames.reshape(-1, *frames.shape[2:]), dtype=np.float32))


def comfy_progress():
    """ComfyUI's progress bar and its Cancel button, when running inside ComfyUI."""
    try:
        import comfy.model_management
        import comfy.utils
    except ImportError:
        return None
    bar = comfy.utils.ProgressBar(1000)

    def report(stage: str, fraction: float) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(round(fraction * 1000), 1000)

    return report


def _sample(pipeline: SVDFastPipeline, first, last, frames, seed, steps, fps, motion_bucket_id, min_cfg, max_cfg,
            augmentation_level, speed_mode, cache_interval, image_init_sigma=0.0,
            keep_first_frame=False, camera="") -> tuple[torch.Tensor]:
    settings = Settings(frames=frames, steps=steps, seed=seed, fps=fps, motion_bucket=motion_bucket_id,
                        min_guidance=min_cfg, max_guidance=max_cfg, noise_aug=augmentation_level,
                        image_init_sigma=image_init_sigma, keep_first_frame=int(keep_first_frame), camera=camera)
    result = pipeline.engine.sample(to_pil(first), settings, Speed(speed_mode, cache_interval), pipeline.loras,
                                    last_image=None if last is None else to_pil(last), on_progress=comfy_progress())
    return (to_image_batch(result.frames),)


class SVDFastLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_path": ("STRING", {"default": "", "tooltip": "diffusers folder or sgm .safetensors file; "
                                                                 "empty: svd_fast's embedded default model"}),
            "dtype": (["auto", "fp32", "bf16", "fp16"], {"default": "auto"}),
            "device": (["auto", "cpu", "cuda"], {"default": "auto"}),
        }}

    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model_path: str, dtype: str, device: str):
        engine = Engine(model_path.strip() or None, dtype=dtype, device=None if device == "auto" else device)
        return (SVDFastPipeline(engine),)


class SVDFastSampler:
    @classmethod
    def INPUT_TYPES(cls):
        from svd_fast.config import SVDConfig

        return {"required": {"pipeline": (PIPELINE,), "image": ("IMAGE",), **_sampling_inputs(SVDConfig.num_frames)},
                "optional": {**SPEED_INPUTS, **KEEP_IMAGE_INPUTS, **CAMERA_INPUT}}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, pipeline, image, seed, steps, frames, fps, motion_bucket_id, min_cfg, max_cfg,
               augmentation_level, speed_mode="exact", cache_interval=Speed.cache_interval, image_init_sigma=0.0,
               keep_first_frame=False, camera=""):
        return _sample(pipeline, image, None, frames, seed, steps, fps, motion_bucket_id, min_cfg, max_cfg,
                       augmentation_level, speed_mode, cache_interval, image_init_sigma, keep_first_frame, camera)


class SVDFastInterpolate:
    """The frames from `first` to `last` (both ends included), with any image-to-video model."""

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _sampling_inputs(8)
        inputs["frames"][1]["min"] = 2  # both ends
        return {"required": {"pipeline": (PIPELINE,), "first": ("IMAGE",), "last": ("IMAGE",), **inputs},
                "optional": dict(SPEED_INPUTS)}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "interpolate"
    CATEGORY = CATEGORY

    def interpolate(self, pipeline, first, last, seed, steps, frames, fps, motion_bucket_id, min_cfg, max_cfg,
                    augmentation_level, speed_mode="exact", cache_interval=Speed.cache_interval):
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (both ends), got {frames}")
        return _sample(pipeline, first, last, frames, seed, steps, fps, motion_bucket_id, min_cfg, max_cfg,
                       augmentation_level, speed_mode, cache_interval)


class SVDFastLoRA:
    """Adds a LoRA adapter (bundled with svd_fast, or any file by path) to the pipeline."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE,),
            "lora_name": ([NO_LORA, *bundled_loras()], {"default": NO_LORA}),
            "lora_path": ("STRING", {"default": "", "tooltip": "a LoRA .safetensors file (used with or without "
                                                                "lora_name)"}),
            "strength": _float("lora_scale", 1.0, 0.05),
        }}

    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, pipeline: SVDFastPipeline, lora_name: str, lora_path: str, strength: float):
        paths = [str(bundled_loras()[lora_name])] if lora_name != NO_LORA else []
        paths += [lora_path.strip()] if lora_path.strip() else []
        if not paths:
            raise ValueError("choose a lora_name or give a lora_path")
        added = tuple(Lora(path, strength).checked() for path in paths)
        return (SVDFastPipeline(pipeline.engine, pipeline.loras + added),)


NODE_CLASS_MAPPINGS = {
    "SVDFastLoader": SVDFastLoader,
    "SVDFastSampler": SVDFastSampler,
    "SVDFastLoRA": SVDFastLoRA,
    "SVDFastInterpolate": SVDFastInterpolate,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SVDFastLoader": "svd_fast Load Video Model",
    "SVDFastSampler": "svd_fast Image to Video (accelerated)",
    "SVDFastLoRA": "svd_fast Apply LoRA",
    "SVDFastInterpolate": "svd_fast Interpolate Frames",
}
