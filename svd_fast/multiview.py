"""Multi-view generation (SVD-MV, paper section 4.5): the views of an orbit around an object from one image.

    python -m svd_fast.multiview --image OBJ.png --out OUT.mp4 [--elevation E] [--model PATH]
        [--views N] [--steps N] [--seed S] [--max-cfg Y] [--size S] [--dtype auto|bf16|fp16|fp32]

Without --model the embedded multi-view model (svd_fast/assets/default_multiview) is used. The
image is view 0 of the orbit, seen from `--elevation` degrees above the object's equator (default
10); the output's views step the camera azimuth by 360/N degrees, counter-clockwise seen from above.

`SVDMultiViewPipeline` is the image-to-video pipeline core (svd_fast.pipeline.SVDPipeline) with the
camera elevation appended to the vector conditioning (svd_fast.conditioner.multiview_time_ids;
the layout is written there). A multi-view model is a config of the one VideoUNet:
`SVDConfig.conditioning == "multiview"` and projection_class_embeddings_input_dim = 4 x
addition_time_embed_dim.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from svd_fast import conditioner
from svd_fast.pipeline import SVDPipeline

DEFAULT_MULTIVIEW_MODEL = Path(__file__).resolve().parent / "assets" / "default_multiview"
DEFAULT_ELEVATION = 10.0
"""degrees; the middle of the training range [-5, 30] of SVD-MV's renders"""


class SVDMultiViewPipeline(SVDPipeline):
    """Orbit views of an object from one image, with a multi-view model (conditioning 'multiview').

    `pipe(image, elevation=10.0, ...)` takes SVDPipeline's (diffusers') arguments except `fps` and
    `motion_bucket_id`, which a multi-view model was trained with fixed (its saved sampling defaults
    are used) and `last_image`. `elevation` is in degrees, one number or one per input image.
    `height`, `width`, `num_frames` (the number of views), `num_inference_steps` and
    `max_guidance_scale` default to the model's sampling defaults (svd_fast_sampling.json), as the
    interpolation and text pipelines' do: the shipped model's card figures are taken with them.
    """

    conditioning = "multiview"

    def __call__(self, image, elevation=DEFAULT_ELEVATION, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, num_inference_steps: int | None = None,
                 max_guidance_scale: float | None = None, **kwargs):
        for name in ("fps", "motion_bucket_id", "last_image"):
            if name in kwargs:
                raise ValueError(f"{name} is not an argument of a multi-view model (fps and motion bucket are fixed "
                                 f"by training: {self.config.fps}, {self.config.motion_bucket_id})")
        self._check_elevation(elevation)
        self._elevation = elevation
        try:
            cfg = self.config
            return super().__call__(image, height=height or cfg.height, width=width or cfg.width,
                                    num_frames=num_frames, num_inference_steps=num_inference_steps or cfg.num_inference_steps,
                                    max_guidance_scale=cfg.max_guidance_scale if max_guidance_scale is None else max_guidance_scale,
                                    fps=cfg.fps, motion_bucket_id=cfg.motion_bucket_id, **kwargs)
        finally:
            del self._elevation

    @staticmethod
    def _check_elevation(elevation) -> None:
        values = torch.as_tensor(elevation, dtype=torch.float64).reshape(-1)
        if len(values) == 0 or not torch.isfinite(values).all() or values.abs().max() > 90:
            raise ValueError(f"elevation must be a finite angle in [-90, 90] degrees, got {elevation!r}")

    def _conditioning(self, image, **kwargs):
        cond = super()._conditioning(image, **kwargs)
        batch = cond.image_latents.shape[0]
        elevation = torch.as_tensor(self._elevation, dtype=torch.float64).reshape(-1)
        if len(elevation) > 1:  # one per image: repeat like the images' videos
            images = batch // kwargs["num_videos_per_prompt"]
            if len(elevation) != images:
                raise ValueError(f"got {len(elevation)} elevations for {images} images")
            elevation = elevation.repeat_interleave(kwargs["num_videos_per_prompt"])
        cond.added_time_ids = conditioner.multiview_time_ids(
            elevation, kwargs["fps"], kwargs["motion_bucket_id"], kwargs["noise_aug_strength"], batch,
            cond.added_time_ids.dtype, cond.added_time_ids.device)
        return cond


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m svd_fast.multiview", description="Orbit views of an object from one image.")
    p.add_argument("--image", required=True, help="the object seen from view 0 (png, jpg, ...)")
    p.add_argument("--out", required=True, help="output: .mp4/.webm, .gif, or .png (one file per view)")
    p.add_argument("--elevation", type=float, default=DEFAULT_ELEVATION,
                   help=f"camera elevation of the input view in degrees (default {DEFAULT_ELEVATION}; trained on [-5, 30])")
    p.add_argument("--model", help="multi-view diffusers folder or sgm .safetensors file (default: the embedded one)")
    p.add_argument("--views", type=int, help="views of the orbit (default: the model's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--max-cfg", type=float, help="guidance at the last view (default: the model's)")
    p.add_argument("--size", type=int, help="output height and width, a multiple of 8 (default: the model's)")
    p.add_argument("--fps", type=int, default=4, help="frame rate of the output video (default 4)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from svd_fast.sample import DTYPES, check_memory
    from svd_fast.video_io import check_output_path, load_image, save_video

    for name in ("views", "steps", "size", "fps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if args.size is not None and args.size % 8:
        raise ValueError(f"--size must be a multiple of 8, got {args.size}")
    if not (math.isfinite(args.elevation) and -90 <= args.elevation <= 90):
        raise ValueError(f"--elevation must be an angle in [-90, 90] degrees, got {args.elevation}")
    if args.max_cfg is not None and not math.isfinite(args.max_cfg):
        raise ValueError(f"--max-cfg must be a finite number, got {args.max_cfg}")
    check_output_path(args.out)
    image = load_image(args.image)
    model = Path(args.model) if args.model else DEFAULT_MULTIVIEW_MODEL
    if not model.exists():
        raise FileNotFoundError(f"model not found: {model}")
    start = time.perf_counter()
    pipe = SVDMultiViewPipeline.from_pretrained(model, torch_dtype=DTYPES.get(args.dtype, args.dtype), device=args.device)
    if pipe.config.conditioning != "multiview":
        raise ValueError(f"{model} is a {pipe.config.conditioning!r} model, not a multi-view one")
    cfg = pipe.config
    size = args.size or cfg.height
    views = args.views or cfg.num_frames
    check_memory(views, size, size)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()
    frames = pipe(image, elevation=args.elevation, height=size, width=size, num_frames=views,
                  num_inference_steps=args.steps, max_guidance_scale=args.max_cfg,  # None: the model's own
                  generator=torch.Generator().manual_seed(args.seed), output_type="np").frames[0]
    written = save_video(frames, args.out, fps=args.fps)
    print(f"wrote {len(frames)} views to {written[0]}" + (f" (+{len(written) - 1} more)" if len(written) > 1 else "")
          + f" (load {loaded - start:.1f}s, sample {time.perf_counter() - loaded:.1f}s)")
    return 0


def cli(argv=None) -> int:
    """main() for the command line: bad input is one line on stderr and exit status 2."""
    from svd_fast.cli import one_line_errors

    return one_line_errors(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
