"""Command line: sample a video from an image, or from a text prompt.

    python -m svd_fast.sample --image IN.png --out OUT.mp4 [--model PATH] [--frames N] [--steps N]
        [--window W] [--overlap O] [--no-colour-anchor] [--no-detail-anchor]
        [--seed S] [--fps F] [--motion-bucket M] [--dtype auto|bf16|fp16|fp32] [--decode-chunk N]
        [--sampler euler|heun|dpmpp_2m|consistency] [--eta E] [--compile] [--cuda-graphs | --no-cuda-graphs]
        [--quantize int8|fp8] [--cache-interval N] [--lora PATH[:SCALE] ...] [--camera MOVE[:SPEED] ...]
        [--camera-from image|noise]

    python -m svd_fast.sample --prompt "TEXT" --out OUT.mp4 [--negative-prompt TEXT] [--guidance-scale G]
        [--camera MOVE[:SPEED] ... | --camera none] [--lead-prompt TEXT|auto|none] [--lead-sigma S]
        [--model PATH] [--frames N] [--steps N] [--seed S] [--fps F] [--motion-bucket M] ...

With --prompt the camera moves as the prompt's camera words say ("camera pans left", "camera zooms
in", ...) through noise that moves with it; --camera sets the move instead, --camera none leaves the
noise plain. The steps above the model's lead sigma are conditioned on the prompt with its dominant
colour alone when it names two ("mostly red (60%) and blue (30%)"); --lead-prompt sets that prompt,
--lead-prompt none turns it off (svd_fast.text_to_video).

Without --model the embedded default model (svd_fast/assets/default_model) is used, and with
--prompt the embedded default text-to-video model (svd_fast/assets/default_t2v).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from svd_fast import camera_start

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default_model"
DEFAULT_T2V_MODEL = Path(__file__).resolve().parent / "assets" / "default_t2v"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m svd_fast.sample",
                                description="Image-to-video or text-to-video with Stable Video Diffusion.")
    p.add_argument("--image", help="conditioning image (png, jpg, ...); or --prompt")
    p.add_argument("--prompt", help="text-to-video: the prompt (a text model; default: the embedded one)")
    p.add_argument("--negative-prompt", help="text-to-video: the unconditional of guidance (default: the empty prompt)")
    p.add_argument("--lead-prompt",
                   help="text-to-video: the prompt of the high-noise steps ('auto', the default: the prompt with its "
                        "dominant colour alone when it names two; 'none': the prompt throughout)")
    p.add_argument("--lead-sigma", type=float,
                   help="text-to-video: steps above this sigma take the lead prompt (default: the model's)")
    p.add_argument("--guidance-scale", type=float,
                   help="text-to-video: guidance scale of every frame (default: the model's; <= 1 turns guidance off)")
    p.add_argument("--out", required=True, help="output: .mp4/.webm, .gif, or .png (one file per frame)")
    p.add_argument("--model", help="diffusers folder or sgm .safetensors file (default: the embedded model)")
    p.add_argument("--frames", type=int,
                   help="number of frames (default: the model's); more than --window makes a long video in chunks")
    p.add_argument("--window", type=int,
                   help="frames the model makes at once (default: the model's number of frames); longer videos are "
                        "chunks of this many frames, each continuing the one before (svd_fast.long_video)")
    p.add_argument("--overlap", type=int, default=1,
                   help="long videos: frames each chunk shares with the one before (held during sampling)")
    p.add_argument("--colour-anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="long videos: give every frame (each chunk's conditioning frame among them) the input image's "
                        "colour statistics")
    p.add_argument("--detail-anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="long videos: give every frame the input image's fine detail, warped onto it by optical flow "
                        "(without it detail fades chunk by chunk)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's preset, 25 for SVD)")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--fps", type=int, help="frame rate of the output and the fps conditioning (default: the model's, 7 for SVD)")
    p.add_argument("--motion-bucket", type=int,
                   help="motion conditioning, higher = more motion (default: the model's, 127 for SVD)")
    p.add_argument("--noise-aug", type=float, default=0.02, help="noise added to the conditioning image")
    p.add_argument("--min-cfg", type=float, default=1.0, help="guidance scale on the first frame")
    p.add_argument("--max-cfg", type=float, help="guidance scale on the last frame (default: the model's, 3.0 for SVD)")
    p.add_argument("--image-init-sigma", type=float, metavar="SIGMA",
                   help="start from the image noised to SIGMA instead of pure noise: lower keeps more of the "
                        "image, higher moves more; 0 = from pure noise (default: the model's; off for SVD)")
    p.add_argument("--keep-first-frame", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the first frame to the input image while sampling (default: the model's; off for SVD)")
    p.add_argument("--render", choices=["frames", "warp"],
                   help="frames: the model's frames; warp: the input image moved by their camera motion, the model's "
                        "motion with the input's pixels (svd_fast.motion_render; default: the model's, frames for SVD; "
                        "one window only: long videos render frames)")
    p.add_argument("--height", type=int, help="output height, a multiple of 8 (default: the model's)")
    p.add_argument("--width", type=int, help="output width, a multiple of 8 (default: the model's)")
    p.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                   help="compute dtype; auto: fp16 on CUDA, bf16 on CPUs with native bf16 (AMX/AVX512-BF16), else fp32")
    p.add_argument("--decode-chunk", type=int, help="frames decoded at once (less memory; default: all)")
    p.add_argument("--sampler", choices=["euler", "heun", "dpmpp_2m", "consistency"],
                   help="default: the model's (consistency for AnimateLCM-SVD-style and distilled checkpoints, else euler)")
    p.add_argument("--eta", type=float, default=1.0,
                   help="consistency sampler: 1 re-noises with fresh noise between steps (LCM), 0 deterministically")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ema", action="store_true", help="use EMA weights when the checkpoint has them")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE decoder (slow first call, cached on disk for later runs)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the UNet step from CUDA graphs (default: on with CUDA)")
    p.add_argument("--quantize", choices=["int8", "fp8"],
                   help="int8: UNet convs and linears on x86 CPUs, linears on CUDA; fp8: linears on CUDA GPUs of "
                        "compute capability 8.9+ (approximate; fast with --compile)")
    p.add_argument("--cache-interval", type=int,
                   help="feature caching: run the UNet's deep blocks every N steps (and the first and last), "
                        "reuse them between (approximate; 1 = exact; not with --compile)")
    p.add_argument("--camera", action="append", default=[], metavar="MOVE[:SPEED]",
                   help="camera move, training-free (svd_fast.camera_start): zoom_in|zoom_out[:ZOOM per frame, "
                        "default 1.05] or pan_left|pan_right|pan_up|pan_down[:fraction of the frame per frame, default "
                        "0.025]; every frame starts from the moved image noised to --image-init-sigma (default 3); "
                        "repeat to combine; a long video carries it on over its chunks. With --prompt: pure noise "
                        "moving that way instead of the prompt's camera words ('none': plain noise)")
    p.add_argument("--camera-from", choices=["image", "noise"],
                   help="image: the moved input noised to sigma 3 starts every frame (default); noise: pure noise "
                        "that moves with the camera (svd_fast.camera_start.warped_noise; --prompt's only way)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="LoRA adapter (svd_fast or diffusers/PEFT safetensors) applied at SCALE (default 1); "
                        "repeat to combine several (their effects add up)")
    return p.parse_args(argv)


def parse_lora(spec: str) -> tuple[Path, float]:
    """'PATH[:SCALE]' -> (path, scale). A path may itself contain ':': SCALE is split off only
    when the part before the last ':' names a .safetensors file."""
    import math

    path, sep, scale = spec.rpartition(":")
    if not sep or not path.endswith(".safetensors"):
        path, scale = spec, "1"
    try:
        value = float(scale)
    except ValueError:
        raise ValueError(f"--lora {spec}: the scale after ':' must be a number, got {scale!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"--lora {spec}: the scale must be a finite number, got {scale}")
    if not Path(path).is_file():
        raise ValueError(f"--lora {spec}: no such file: {path}")
    return Path(path), value


def load_loras(pipe, specs: list[str]) -> None:
    """Load each --lora onto the pipeline (named after its file), all active at their scales."""
    import re

    for i, spec in enumerate(specs):
        path, scale = parse_lora(spec)
        name = f"{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{i}"
        pipe.load_lora_weights(path, adapter_name=name, scale=scale)
        print(f"LoRA {path} at scale {scale:g} (adapter {name})")


def resolve_model(model: str | None, default: Path | None = None) -> Path:
    """--model, else the embedded `default` (DEFAULT_MODEL unless given), with a clear exit if absent."""
    default = default if default is not None else DEFAULT_MODEL
    if model is not None:
        path = Path(model)
        if not path.exists():
            raise SystemExit(f"error: model not found: {path}")
        return path
    if not (default / "model_index.json").is_file():
        raise SystemExit(
            f"error: no embedded default model is present at {default}.\n"
            "Pass a checkpoint with --model PATH (a diffusers folder such as "
            "stable-video-diffusion-img2vid-xt, or an sgm file such as svd_xt.safetensors)."
        )
    return default


def check_inputs(args) -> None:
    """Exactly one of --image and --prompt; a prompt with words; no image-only flags with a prompt."""
    if (args.image is None) == (args.prompt is None):
        raise ValueError("give exactly one of --image (image-to-video) and --prompt (text-to-video)")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise ValueError("--prompt is empty: describe the video (the empty prompt is guidance's unconditional)")
        for flag, value in (("--window", args.window), ("--min-cfg", args.min_cfg != 1.0 or None),
                            ("--max-cfg", args.max_cfg), ("--noise-aug", args.noise_aug != 0.02 or None),
                            ("--render", args.render), ("--camera-from image", args.camera_from == "image" or None)):
            if value is not None:
                raise ValueError(f"{flag} is an image-to-video flag, not for --prompt")
        if "none" in args.camera and len(args.camera) > 1:
            raise ValueError("--camera none leaves the noise plain: not with other --camera moves")
        if args.lead_sigma is not None and not (args.lead_sigma >= 0 and math.isfinite(args.lead_sigma)):
            raise ValueError(f"--lead-sigma must be a finite sigma >= 0, got {args.lead_sigma}")
    elif any(v is not None for v in (args.negative_prompt, args.guidance_scale, args.lead_prompt, args.lead_sigma)):
        raise ValueError("--negative-prompt, --guidance-scale, --lead-prompt and --lead-sigma go with --prompt "
                         "(text-to-video)")


def check_arguments(args) -> None:
    """Out-of-range flags fail before anything loads (a 0 must not silently mean "the default").
    Flags a command does not have are skipped (python -m svd_fast.interpolate shares this)."""
    import math

    for name in ("frames", "steps", "fps", "window", "height", "width"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    for name in ("motion_bucket", "noise_aug", "image_init_sigma"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    for name in ("min_cfg", "max_cfg"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if not 0 <= getattr(args, "eta", 0) <= 1:
        raise ValueError(f"--eta must be between 0 and 1, got {args.eta}")
    for spec in getattr(args, "lora", []):
        parse_lora(spec)
    for spec in getattr(args, "camera", []):
        if not (spec == "none" and getattr(args, "prompt", None) is not None):  # --prompt's plain noise
            camera_start.parse_move(spec)


def image_init_sigma(args, pipe, render: str) -> float | None:
    """--image-init-sigma (0: off), else the model's default for `render`. The default is skipped under
    the consistency sampler (a student samples from pure noise), with render 'warp'
    (SVDPipeline.default_image_init_sigma) and with LoRA adapters: a camera LoRA
    sets its motion at high noise, which a start from the noised image never visits (measured: the
    pan LoRAs' direction right in 12 of 12 videos from pure noise, at chance from sigma 3)."""
    if args.image_init_sigma is not None:
        return args.image_init_sigma or None
    if args.camera:
        return None  # the camera's moved frames start at camera_start.START_SIGMA
    default = pipe.default_image_init_sigma(args.sampler, render)
    if default is not None and args.lora:
        print(f"with LoRA adapters sampling starts from pure noise, not the model's default start at sigma "
              f"{default:g} (the adapters set the motion at high noise; --image-init-sigma overrides)")
        return None
    return default


def render_mode(args, cfg, long_video: bool) -> str:
    """--render, else the model's; a long video renders its frames (the warp render moves one
    window's worth of camera motion from the input image; chunks would carry it off the frame)."""
    if not long_video:
        return args.render or cfg.render
    if args.render == "warp":
        raise ValueError("--render warp makes one window of frames; a long video (--frames > --window) renders frames")
    return "frames"


def check_memory(frames: int, height: int, width: int) -> None:
    """Refuse a video whose decoded frames alone (fp32 + uint8) exceed this machine's memory, with
    the figures, instead of being killed part-way."""
    import os

    need = frames * height * width * 3 * (4 + 1)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ValueError(f"{frames} frames of {width}x{height} need {need / 2**30:.1f} GiB for the decoded frames "
                         f"alone; this machine has {have / 2**30:.1f} GiB")


def main(argv=None) -> int:
    args = parse_args(argv)
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.video_io import check_output_path, load_image, save_video

    check_inputs(args)
    check_arguments(args)
    check_output_path(args.out)
    if args.prompt is not None:
        return _text_to_video(args)
    model = resolve_model(args.model)
    image = load_image(args.image)
    start = time.perf_counter()
    dtype = DTYPES.get(args.dtype, args.dtype)  # "auto" is resolved (and reported) by the pipeline
    pipe = SVDPipeline.from_pretrained(model, torch_dtype=dtype, device=args.device, use_ema=args.ema,
                                       compile=args.compile, cuda_graphs=args.cuda_graphs)
    load_loras(pipe, args.lora)
    if args.lora and args.quantize:
        pipe.fuse_lora()  # int8 copies are made from the weights as stored: fold the adapters in first
    if args.quantize or args.cache_interval is not None:
        from svd_fast.accel import accelerate

        accelerate(pipe, quantize=args.quantize, cache_interval=args.cache_interval)
    load_time = time.perf_counter() - start
    cfg = pipe.config
    fps = args.fps or cfg.fps
    frames = args.frames or cfg.num_frames
    window = args.window or cfg.num_frames
    render = render_mode(args, cfg, long_video=frames > window)
    common = dict(
        height=args.height or cfg.height,
        width=args.width or cfg.width,
        num_inference_steps=args.steps or cfg.num_inference_steps,
        min_guidance_scale=args.min_cfg,
        max_guidance_scale=cfg.max_guidance_scale if args.max_cfg is None else args.max_cfg,
        fps=fps,
        motion_bucket_id=cfg.motion_bucket_id if args.motion_bucket is None else args.motion_bucket,
        noise_aug_strength=args.noise_aug,
        decode_chunk_size=args.decode_chunk,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        sampler=args.sampler,
        eta=args.eta,
        image_init_sigma=image_init_sigma(args, pipe, render),
        keep_first_frame=cfg.keep_first_frame if args.keep_first_frame is None else args.keep_first_frame,
    )
    check_memory(min(frames, window), common["height"], common["width"])
    if args.camera:
        common.update(camera=args.camera, camera_from=args.camera_from or "image")
    if frames > window:
        return _long_video(pipe, image, frames, window, args, common, load_time, fps)
    result = pipe(image, num_frames=frames, output_type="np", render=render, **common)
    start = time.perf_counter()
    written = save_video(result.frames[0], args.out, fps=fps)
    write_time = time.perf_counter() - start
    t = result.timings
    steps = t["unet_steps"]
    print(f"wrote {len(result.frames[0])} frames to {', '.join(str(w) for w in written[:1])}"
          + (f" (+{len(written) - 1} more)" if len(written) > 1 else ""))
    from svd_fast.accel import compile_seconds

    compiled = f" (of which compile {compile_seconds(pipe):.1f}s)" if args.compile else ""
    print(f"load {load_time:.2f}s | image encode {t['image_encode']:.2f}s | denoise {sum(steps):.2f}s "
          f"({len(steps)} steps, {sum(steps) / max(len(steps), 1):.2f}s/step){compiled} | decode {t['vae_decode']:.2f}s | "
          + (f"render {t['render']:.2f}s | " if "render" in t else "") + f"write {write_time:.2f}s")
    return 0


def _text_to_video(args) -> int:
    """--prompt: SVDTextToVideoPipeline on --model or the embedded default text-to-video model."""
    import math

    from svd_fast.text_to_video import SVDTextToVideoPipeline
    from svd_fast.video_io import save_video

    if args.guidance_scale is not None and not math.isfinite(args.guidance_scale):
        raise ValueError(f"--guidance-scale must be a finite number, got {args.guidance_scale}")
    model = resolve_model(args.model, DEFAULT_T2V_MODEL)
    start = time.perf_counter()
    pipe = SVDTextToVideoPipeline.from_pretrained(model, torch_dtype=DTYPES.get(args.dtype, args.dtype),
                                                  device=args.device, use_ema=args.ema, compile=args.compile,
                                                  cuda_graphs=args.cuda_graphs)
    load_loras(pipe, args.lora)
    load_time = time.perf_counter() - start
    cfg = pipe.config
    height, width = args.height or cfg.height, args.width or cfg.width
    frames, fps = args.frames or cfg.num_frames, args.fps or cfg.fps
    check_memory(frames, height, width)
    result = pipe(args.prompt, negative_prompt=args.negative_prompt, num_frames=frames, height=height, width=width,
                  num_inference_steps=args.steps, guidance_scale=args.guidance_scale, fps=fps,
                  motion_bucket_id=args.motion_bucket, decode_chunk_size=args.decode_chunk,
                  generator=torch.Generator("cpu").manual_seed(args.seed), sampler=args.sampler, eta=args.eta,
                  camera=None if args.camera == ["none"] else args.camera or "prompt",
                  lead_prompt={None: "auto", "none": None}.get(args.lead_prompt, args.lead_prompt),
                  lead_sigma=args.lead_sigma, output_type="np")
    written = save_video(result.frames[0], args.out, fps=fps)
    t = result.timings
    steps = t["unet_steps"]
    print(f"wrote {len(result.frames[0])} frames to {written[0]}" + (f" (+{len(written) - 1} more)" if len(written) > 1 else ""))
    print(f"load {load_time:.2f}s | text encode {t['image_encode']:.2f}s | denoise {sum(steps):.2f}s "
          f"({len(steps)} steps) | decode {t['vae_decode']:.2f}s")
    return 0


def _long_video(pipe, image, frames: int, window: int, args, common: dict, load_time: float, fps: int) -> int:
    from svd_fast.long_video import chunk_plan, sample_long_video
    from svd_fast.video_io import save_video

    chunks = len(chunk_plan(frames, window, args.overlap))
    print(f"long video: {frames} frames in {chunks} chunks of {window} (overlap {args.overlap})")
    start = time.perf_counter()
    video = sample_long_video(pipe, image, frames, window=window, overlap=args.overlap, colour_anchor=args.colour_anchor,
                              detail_anchor=args.detail_anchor,
                              on_chunk=lambda c, n: print(f"chunk {c.index + 1}/{n} done", flush=True), **common)
    sample_time = time.perf_counter() - start
    written = save_video(video, args.out, fps=fps)
    print(f"wrote {len(video)} frames to {written[0]}" + (f" (+{len(written) - 1} more)" if len(written) > 1 else ""))
    print(f"load {load_time:.2f}s | sample {sample_time:.2f}s ({sample_time / chunks:.2f}s/chunk)")
    return 0


def cli(argv=None) -> int:
    """main() for the command line: bad input is one line on stderr and exit status 2, no traceback."""
    from svd_fast.cli import one_line_errors

    return one_line_errors(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
