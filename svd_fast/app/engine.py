"""One loaded pipeline shared by the front ends (the web demo and the ComfyUI nodes).

`Engine.sample` applies a request's speed mode and LoRA adapters to the pipeline (only what
changed since the last request: quantizing or loading an adapter is not free), samples under a
lock so that one job at a time touches the weights, and reports progress through a callback.
`LIMITS` is the one table of allowed values: the page's inputs, the server's checks and the
ComfyUI nodes' INPUT_TYPES all read it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ASSETS = Path(__file__).resolve().parent.parent / "assets"

# name -> (lowest, highest) allowed value.
LIMITS = {
    "frames": (1, 256),
    "steps": (1, 200),
    "seed": (0, 2**64 - 1),  # torch.Generator.manual_seed takes unsigned 64-bit seeds
    "fps": (1, 240),
    "motion_bucket": (0, 1023),
    "min_guidance": (0.0, 30.0),
    "max_guidance": (0.0, 30.0),
    "image_init_sigma": (0.0, 700.0),  # 0: from pure noise
    "keep_first_frame": (0, 1),
    "warp_render": (0, 1),
    "noise_aug": (0.0, 10.0),
    "cache_interval": (1, 100),
    "lora_scale": (-4.0, 4.0),
}
SPEED_MODES = ("exact", "cache", "int8")  # exact; DeepCache feature caching (cache_interval); int8 UNet


def check_range(name: str, value) -> None:
    """A ValueError in one line for a value outside LIMITS (NaN included: it fails both comparisons)."""
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise ValueError(f"{name.replace('_', ' ')} must be between {low} and {high}, got {value}")


@dataclass(frozen=True)
class Settings:
    """What one video is sampled with (the pipeline's call arguments under shorter names)."""

    frames: int
    steps: int
    seed: int
    fps: int
    motion_bucket: int
    max_guidance: float
    min_guidance: float = 1.0
    noise_aug: float = 0.02
    image_init_sigma: float = 0.0
    """start from the image noised to this sigma; 0 = from pure noise"""
    keep_first_frame: int = 0
    """1: hold frame 0 to the image"""
    warp_render: int = 0
    """1: the input image moved by the camera motion of the model's frames (render 'warp'); one window only"""
    camera: str = ""
    """camera moves without training, comma-separated (svd_fast.camera_start: 'zoom_in', 'pan_left:0.02', ...);
    empty: none. Its frames start at image_init_sigma, or at camera_start.START_SIGMA when that is 0"""

    def checked(self) -> "Settings":
        from svd_fast.camera_start import as_move

        for name in ("frames", "steps", "seed", "fps", "motion_bucket", "min_guidance", "max_guidance", "noise_aug",
                     "image_init_sigma", "keep_first_frame", "warp_render"):
            check_range(name, getattr(self, name))
        if self.camera_moves():
            as_move(self.camera_moves())
        return self

    def camera_moves(self) -> list[str]:
        return [part.strip() for part in self.camera.split(",") if part.strip()]

    def call_args(self, height: int, width: int) -> dict:
        return dict(num_frames=self.frames, num_inference_steps=self.steps, fps=self.fps,
                    motion_bucket_id=self.motion_bucket, min_guidance_scale=self.min_guidance,
                    max_guidance_scale=self.max_guidance, noise_aug_strength=self.noise_aug, height=height,
                    width=width, generator=torch.Generator("cpu").manual_seed(self.seed), output_type="np",
                    image_init_sigma=self.image_init_sigma or None, keep_first_frame=bool(self.keep_first_frame),
                    render="warp" if self.warp_render else "frames", camera=self.camera_moves() or None)


@dataclass(frozen=True)
class Speed:
    """The sample CLI's speed modes: exact, `--cache-interval N`, `--quantize int8`."""

    mode: str = "exact"
    cache_interval: int = 3

    def checked(self) -> "Speed":
        if self.mode not in SPEED_MODES:
            raise ValueError(f"speed mode must be one of {', '.join(SPEED_MODES)}, got {self.mode!r}")
        check_range("cache_interval", self.cache_interval)
        return self

    def accelerate_args(self) -> dict:
        if self.mode == "cache":
            return {"cache_interval": self.cache_interval}
        return {"quantize": "int8"} if self.mode == "int8" else {}


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter file and the scale it is applied with."""

    path: str
    scale: float = 1.0
    modified: int = 0  # the file's mtime (ns) when checked: a file rewritten in place is loaded again

    def checked(self) -> "Lora":
        path = Path(self.path)
        if path.suffix != ".safetensors" or not path.is_file():
            raise ValueError(f"LoRA adapter not found (a .safetensors file): {self.path}")
        check_range("lora_scale", self.scale)
        return replace(self, path=str(path.resolve()), modified=path.stat().st_mtime_ns)


def bundled_loras() -> dict[str, Path]:
    """LoRA adapters shipped with the package (`*lora*.safetensors` under svd_fast/assets), by name."""
    return {str(p.relative_to(ASSETS)): p for p in sorted(ASSETS.rglob("*lora*.safetensors"))}


@dataclass
class Result:
    frames: np.ndarray  # (B, T, H, W, 3) float32 in [0, 1], the pipeline's output_type="np"
    timings: dict = field(default_factory=dict)
    """seconds: configure, image_encode, denoise, per_step, vae_decode; a long video (more frames than the
    model's window) has its whole sampling under denoise and the number of chunks under chunks"""


Progress = Callable[[str, float], None]  # (stage, fraction done in [0, 1])


class Engine:
    """An SVDPipeline loaded once, with the speed mode and adapters of the last request applied."""

    def __init__(self, model: str | Path | None = None, dtype="auto", device: str | None = None):
        from svd_fast.pipeline import SVDPipeline
        from svd_fast.sample import DTYPES, resolve_model

        try:
            self.model_path = resolve_model(None if model in (None, "") else str(model))
        except SystemExit as err:  # the CLI's exit; a host process (ComfyUI, the server) must live on
            raise ValueError(str(err).removeprefix("error: ")) from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pipe = SVDPipeline.from_pretrained(self.model_path, torch_dtype=DTYPES.get(dtype, dtype), device=device)
        self.pipe.set_progress_bar_config(disable=True)
        self.lock = threading.Lock()
        self._speed, self._loras = Speed(), ()

    def defaults(self) -> Settings:
        """The model's sampling defaults (saved with it, else SVD's), as the sample CLI uses them."""
        cfg = self.pipe.config
        start = self.pipe.default_image_init_sigma()
        return Settings(frames=cfg.num_frames, steps=cfg.num_inference_steps, seed=23, fps=cfg.fps,
                        motion_bucket=cfg.motion_bucket_id, max_guidance=cfg.max_guidance_scale,
                        image_init_sigma=start or 0.0, keep_first_frame=int(cfg.keep_first_frame),
                        warp_render=int(cfg.render == "warp"))

    def sample(self, image, settings: Settings, speed: Speed = Speed(), loras: tuple[Lora, ...] = (),
               last_image=None, on_progress: Progress | None = None) -> Result:
        """Frames for `image` (a PIL image or a list of them); `last_image` makes the frames between
        `image` and it (svd_fast.interpolate). Waits while another job samples."""
        from svd_fast.sample import check_memory

        settings, speed = settings.checked(), speed.checked()
        loras = tuple(lora.checked() for lora in loras)
        cfg = self.pipe.config
        check_memory(settings.frames, cfg.height, cfg.width)
        report = on_progress or (lambda stage, fraction: None)
        with self.lock:
            start = time.perf_counter()
            report("preparing the model", 0.0)
            self._configure(speed, loras)
            configure_time = time.perf_counter() - start
            report("encoding the image", 0.0)
            steps = settings.steps

            def on_step(pipe, i, sigma, tensors):
                done = i + 1  # the decode counts as one more unit of work after the steps
                report(f"step {done}/{steps}" if done < steps else "decoding", done / (steps + 1))
                return tensors

            call = settings.call_args(cfg.height, cfg.width)
            if call["camera"] and last_image is not None:
                raise ValueError("a camera move starts from one image: not with a last image")
            if last_image is not None or settings.frames > cfg.num_frames:
                # The warp render moves one window from the input image: a long video or the frames
                # between two images render frames (as the sample CLI), a long one from the frames' start.
                call["render"] = "frames"
                if settings.warp_render and not settings.image_init_sigma:
                    call["image_init_sigma"] = self.pipe.default_image_init_sigma(render="frames")
            if last_image is None and settings.frames > cfg.num_frames:
                frames, seconds, chunks = self._long_video(image, call, report)
                report("done", 1.0)
                return Result(frames=frames, timings={"configure": configure_time, "image_encode": 0.0, "denoise": seconds,
                                                      "per_step": [], "vae_decode": 0.0, "chunks": chunks})
            if last_image is not None:  # the frames between two images start from pure noise
                call["image_init_sigma"] = None
            output = self.pipe(image, last_image=last_image, callback_on_step_end=on_step, **call)
        report("done", 1.0)
        t = output.timings
        return Result(frames=output.frames, timings={
            "configure": configure_time, "image_encode": t["image_encode"], "denoise": sum(t["unet_steps"]),
            "per_step": list(t["unet_steps"]), "vae_decode": t["vae_decode"]})

    def _long_video(self, image, call: dict, report: Progress) -> tuple[np.ndarray, float, int]:
        """More frames than the model's window: svd_fast.long_video's chunks, as the sample CLI makes
        them (overlap 1, colour and detail anchors), one image after the other; (frames, seconds, chunks)."""
        from svd_fast.long_video import chunk_plan, sample_long_video

        cfg = self.pipe.config
        call = {k: v for k, v in call.items() if k != "output_type"}
        num_frames, steps = call.pop("num_frames"), call.pop("num_inference_steps")
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        chunks = len(chunk_plan(num_frames, cfg.num_frames, 1))
        total, done = chunks * len(images), [0]

        def on_chunk(chunk, count):
            done[0] += 1
            report(f"chunk {done[0]}/{total}", done[0] / total)

        start = time.perf_counter()
        videos = [sample_long_video(self.pipe, picture, num_frames, window=cfg.num_frames, num_inference_steps=steps,
                                    on_chunk=on_chunk, **call) for picture in images]
        return np.stack(videos), time.perf_counter() - start, total  # float32, as sample_long_video returns

    def _configure(self, speed: Speed, loras: tuple[Lora, ...]) -> None:
        """Bring the pipeline to `speed` and `loras`. Adapters go on the float weights, so the speed
        mode is undone first whenever either changes, and applied again last."""
        from svd_fast import adapters
        from svd_fast.accel import accelerate, restore

        if (speed, loras) == (self._speed, self._loras):
            return
        restore(self.pipe)
        if adapters.is_fused(adapters.plain_unet(self.pipe)):  # fused for int8; unloading would keep them in W
            self.pipe.unfuse_lora()
        self._speed = None  # unknown until accelerate succeeds: the next request configures again
        if loras != self._loras:
            self._set_loras(loras)
        if speed.mode == "int8" and loras:
            self.pipe.fuse_lora()  # int8 weights hold one fixed weight per layer
        accelerate(self.pipe, **speed.accelerate_args())
        self._speed = speed

    def _set_loras(self, loras: tuple[Lora, ...]) -> None:
        """Unload the adapters of the last request, load these; a failure leaves none loaded."""
        self.pipe.unload_lora_weights()
        self._loras = ()
        try:
            for i, lora in enumerate(loras):
                self.pipe.load_lora_weights(lora.path, adapter_name=f"adapter_{i}", scale=lora.scale)
        except Exception:
            self.pipe.unload_lora_weights()
            raise
        self._loras = loras
