"""python -m svd_fast.eval: score a folder of videos, or a model's videos of a set of images.

    python -m svd_fast.eval VIDEOS/ [--inputs IMAGES/] [--reference REAL/] [--prompts P.json --clip CLIP/] --out OUT/
    python -m svd_fast.eval --model default --images IMAGES/ --seeds 2 [--reference REAL/] --out OUT/

Per video: first-frame PSNR and colour shift against the conditioning image (with --inputs, or
in model mode), mean optical flow, flow-warped PSNR, colour drift, and the CLIP score against its
prompt (--prompts and --clip). Per run: FVD against --reference (features from --features:
`default` = the model's own encoders, an in-world FVD; `i3d` = the published FVD's network, with
--i3d-weights; or MODULE:CALLABLE). Writes OUT/metrics.json, OUT/metrics.png, prints a table.
Bad input is one line on stderr and exit status 2.

The paper's zero-shot UCF-101 FVD (svd_facts, Table 2 / App. E.4; SVD base: 242.02) is a
text-to-video protocol; with the data, a text-to-video model and the Kinetics-400 I3D weights:
1. generate 13,320 videos of 16 frames at 25 fps, 320x576, CFG 7, prompted with the UCF-101 class
   names in the dataset's class proportions, into GEN/;
2. put 16-frame clips of the UCF-101 videos into REAL/;
3. bring both to the paper's frames: bilinear, antialiased resize to 240x432, centre crop 240x320,
   e.g. `ffmpeg -i IN -vf "scale=432:240:flags=bilinear,crop=320:240" -frames:v 16 OUT.mp4`;
4. python -m svd_fast.eval GEN/ --reference REAL/ --features i3d --i3d-weights rgb_imagenet.pt --out ucf101/
The paper took I3D from StyleGAN-V's TorchScript file; svd_fast never unpickles code, so pass the
same network's weights as safetensors or a state dict (key names in svd_fast/eval/i3d.py).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m svd_fast.eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="?", help="folder of videos (.mp4/.webm/.mov/.mkv/.avi/.gif, <name>_0000.png frames)")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.png (and sampled videos)")
    p.add_argument("--inputs", help="folder of the conditioning images, by video name, for the first-frame figures")
    p.add_argument("--model", help="sample the videos with this model ('default': the embedded one)")
    p.add_argument("--images", help="with --model: folder of conditioning images")
    p.add_argument("--seeds", type=int, default=1, help="with --model: videos per image, seeds 0..N-1 (default 1)")
    p.add_argument("--steps", type=int, help="with --model: sampling steps (default: the model's)")
    p.add_argument("--reference", help="folder of reference videos: compute FVD against them")
    p.add_argument("--features", default="default", help="FVD features: default | i3d | MODULE:CALLABLE")
    p.add_argument("--i3d-weights", help="Kinetics-400 I3D weights for --features i3d")
    p.add_argument("--frames", type=int, help="frames per clip for FVD (default: 16 for i3d, else the shortest clip)")
    p.add_argument("--prompts", help="JSON {video name: prompt} or NAME<TAB>PROMPT lines, for the CLIP score")
    p.add_argument("--clip", help="folder of a transformers CLIPModel + CLIPProcessor, for the CLIP score")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def check_arguments(args) -> None:
    """Contradictory or missing flags fail before anything loads."""
    if args.model is not None:
        if args.videos is not None:
            raise ValueError("give either a video folder or --model with --images, not both")
        if args.images is None:
            raise ValueError("--model needs --images DIR (the conditioning images)")
        if args.seeds < 1 or (args.steps is not None and args.steps < 1):
            raise ValueError("--seeds and --steps must be >= 1")
    elif args.videos is None:
        raise ValueError("give a folder of videos, or --model PATH --images DIR")
    elif args.images is not None:
        raise ValueError("--images is for --model; for a video folder, --inputs names the conditioning images")
    if (args.prompts is None) != (args.clip is None):
        raise ValueError("the CLIP score needs both --prompts FILE and --clip FOLDER")
    if args.frames is not None and args.frames < 2:
        raise ValueError(f"--frames must be >= 2, got {args.frames}")
    if args.features == "i3d" and args.reference is not None and args.i3d_weights is None:
        raise ValueError("FVD with I3D features needs the Kinetics-400 I3D weights, which do not ship with "
                         "svd_fast: pass --i3d-weights PATH (key names: svd_fast/eval/i3d.py)")


def _videos_and_inputs(args, out: Path):
    from svd_fast.eval.inputs import load_input_images, load_videos, match

    if args.model is not None:
        from svd_fast.eval.generate import sample_videos

        images = load_input_images(args.images)
        videos = sample_videos(args.model, images, args.seeds, out / "videos", steps=args.steps, device=args.device)
    else:
        videos = load_videos(args.videos)
        images = load_input_images(args.inputs) if args.inputs else {}
    return videos, {v.name: match(v.name, images) for v in videos}


def _prompts(args, videos) -> dict:
    from svd_fast.eval.inputs import load_prompts, match

    if args.prompts is None:
        return {}
    table = load_prompts(args.prompts)
    prompts = {v.name: match(v.name, table) for v in videos}
    missing = [name for name, prompt in prompts.items() if prompt is None]
    if missing:
        raise ValueError(f"{args.prompts}: no prompt for {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return prompts


def fvd(args, videos) -> dict:
    """FVD of the videos against --reference, on clips of a common length."""
    from svd_fast.eval.features import extract, resolve_extractor
    from svd_fast.eval.frechet import frechet_distance_of
    from svd_fast.eval.inputs import load_videos

    reference = load_videos(args.reference)
    if len(videos) < 2 or len(reference) < 2:
        raise ValueError(f"FVD needs at least 2 videos on each side, got {len(videos)} and {len(reference)}")
    extractor, needed = resolve_extractor(args.features, i3d_weights=args.i3d_weights, model=args.model, device=args.device)
    frames = args.frames or needed or min(len(v.frames) for v in videos + reference)
    short = [v for v in videos + reference if len(v.frames) < frames]
    if short:
        raise ValueError(f"FVD compares clips of {frames} frames; {short[0].path} has {len(short[0].frames)}")
    ours = extract(extractor, [v.frames[:frames] for v in videos], [v.name for v in videos])
    theirs = extract(extractor, [v.frames[:frames] for v in reference], [str(v.path) for v in reference])
    return {"value": frechet_distance_of(ours, theirs), "features": args.features, "frames": frames,
            "feature_dim": int(ours.shape[1]), "videos": len(videos), "reference_videos": len(reference),
            "reference": str(args.reference)}


def _finite(value):
    """JSON has no inf/nan: they become null (an infinite PSNR means identical frames)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def evaluate(args: argparse.Namespace) -> dict:
    """The whole evaluation for parsed arguments; writes OUT/metrics.json and OUT/metrics.png."""
    check_arguments(args)
    from svd_fast.checkpoints.io import write_json
    from svd_fast.eval import report
    from svd_fast.eval.video_scores import score_video, summarise

    out = Path(args.out)
    start = time.perf_counter()
    videos, inputs = _videos_and_inputs(args, out)
    prompts = _prompts(args, videos)
    clip = None
    if args.clip is not None:
        from svd_fast.eval.clip_score import ClipScorer

        clip = ClipScorer(args.clip, args.device)
    rows = {v.name: {"path": str(v.path), "fps": v.fps,
                     **score_video(v.frames, inputs.get(v.name), prompts.get(v.name), clip)} for v in videos}
    for name, image in inputs.items():
        if image is not None:
            rows[name]["input_image"] = str(image)
    result = {"videos": rows, "summary": summarise(rows), "fvd": fvd(args, videos) if args.reference else None,
              "settings": dict(vars(args)), "seconds": time.perf_counter() - start}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", _finite(result))
    report.plot(result, out / "metrics.png")
    return result


def cli(argv=None) -> int:
    """The command: the table and where the files went on stdout; bad input is one line on stderr
    and exit status 2, no traceback."""
    from svd_fast.cli import one_line_errors
    from svd_fast.eval.report import table

    args = parse_args(argv)

    def run(_argv) -> int:
        result = evaluate(args)
        print(table(result))
        print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'metrics.png'}")
        return 0

    return one_line_errors(run, argv)


if __name__ == "__main__":
    sys.exit(cli())
