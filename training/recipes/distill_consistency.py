"""Consistency distillation of the embedded default model into a few-step student.

    python training/recipes/distill_consistency.py [--teacher svd_fast/assets/default_model] \
        [--workdir runs/distill_consistency] [--out svd_fast/assets/default_model_distilled] [--steps N]

svd_fast.train.distill's objective (CM / LCM / AnimateLCM): the teacher's guided Euler step over
10 intervals of a 40-point Karras grid (LCM's skipping step), the EMA of the student as the target
network, the student's scalings exact at sigma_min. With one interval per step (--skip 1, 2400
steps) the student's 4-step videos were 1.5 dB below the teacher's first frame and moved 29-44%
more; ten intervals leave four links between sigma_max and the boundary instead of 39, and the
student at 1200 steps matches the teacher's first frame and flow. The student learns the guided trajectories, so it samples without
guidance (one UNet batch per step) with the `consistency` sampler; by default in 2 steps with the
teacher's frame-0 hold and warp render (STUDENT_SAMPLING); all of it is saved with it (scheduler
config and svd_fast_sampling.json), so `--model` on the output folder just works. `--refresh-card`
re-measures a shipped student's defaults without training.

Data: the default model's curated shards (training/recipes/default_model.py makes them in the
work folder, or --shards reuses a default-model work folder's). Then the student is exported in fp16
and measured against the teacher on the held-out photographs (never trained on), several seeds:
first-frame PSNR vs the input, mean optical flow, flow-warped consistency, PSNR of the frames vs
the teacher's 25-step video of the same seed, and the wall time of the whole call; MODEL_CARD.md.
A run resumes from its checkpoints when interrupted.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import default_model as dm  # noqa: E402  (its data, held-out photos and sampling resolution)

from svd_fast.checkpoints.io import write_json, write_text  # noqa: E402
from svd_fast.train.distill import DistillConfig  # noqa: E402
from svd_fast.train.objective import ObjectiveConfig  # noqa: E402
from svd_fast.train.recipe import OptimConfig, Recipe  # noqa: E402

STUDENT_SAMPLING = dict(num_inference_steps=2, max_guidance_scale=1.0, image_init_sigma=None, keep_first_frame=True,
                        render="warp")
"""the student's sampling defaults (as the teacher's since 2026-12-03): consistency steps from pure
noise (it learnt the guided ODE from sigma_max), no guidance, frame 0 held, the video rendered from
the input along its frames' camera motion. 2 steps: under the render they move more than 4 (which
re-noise and redraw twice as often) at the same consistency; the sweep is in the card
(evaluate_defaults)."""
DEFAULTS_SWEEP_STEPS = (1, 2, 4)
"""student step counts measured under the default settings, to choose STUDENT_SAMPLING's"""
TEACHER_STEPS = 25  # the teacher's reference: SVD's default step count
TEACHER_GUIDANCE = 2.0
"""the teacher's per-frame guidance 1 -> 2 that the student was distilled from (SVD-style sampling; the
default model's own sampling default is unguided since it starts from the image, see its card)"""
EVAL_SEEDS = (0, 1, 2)


def distill_recipe(teacher: Path, shards: Path, work: Path, steps: int, solver: str, skip: int) -> Recipe:
    from svd_fast.checkpoints import load_components

    config = load_components(teacher)["config"]
    return Recipe(
        name="default-distill-consistency", output_dir=str(work / "student"),
        model=dataclasses.replace(config, **STUDENT_SAMPLING), components=str(teacher),
        init_from=str(teacher), init_weights="model",
        data=dm.curated(shards, dm.HIGH, frame_strides=(1, 2)),
        # stage 3's conditioning noise; no condition dropout: the student never samples unconditionally
        objective=ObjectiveConfig(p_mean=1.0, p_std=1.6, drop_image_embedding=0.0, drop_image_latent=0.0),
        optim=OptimConfig(lr=1e-4, warmup_steps=50), batch_size=2, max_steps=steps, ema_decay=0.95, seed=0,
        distill=DistillConfig(solver=solver, skip=skip, max_guidance_scale=TEACHER_GUIDANCE),
        log_every=25, checkpoint_every=200, keep_checkpoints=1, export_final=True,
    )


def export(run: Path, out: Path) -> None:
    """fp16 EMA weights of the student (a diffusers folder with its consistency scheduler)."""
    from svd_fast.checkpoints import load_components, save_components

    save_components(load_components(run / "final", use_ema=True, dtype=torch.float16), out, overwrite=True)


def evaluate(teacher: Path, student: Path, seeds=EVAL_SEEDS) -> dict:
    """Teacher (25 and 4 Euler steps, its guidance) and student (1, 2, 4, 8 steps, no guidance) on
    the held-out photos: card figures, PSNR vs the teacher's 25-step frames, seconds per call."""
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.video_metrics import psnr, video_report

    pipes = {"teacher": SVDPipeline.from_pretrained(teacher, torch_dtype=torch.float32),
             "student": SVDPipeline.from_pretrained(student, torch_dtype=torch.float32)}
    config = pipes["teacher"].unet.config
    runs = {f"teacher_{TEACHER_STEPS}": ("teacher", TEACHER_STEPS), "teacher_4": ("teacher", 4),
            **{f"student_{k}": ("student", k) for k in (1, 2, 4, 8)}}
    rows = {name: [] for name in runs}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    for name, image in dm.held_out_photos().items():
        picture = image.permute(1, 2, 0).numpy()
        for seed in seeds:
            reference = None
            for run, (which, steps) in runs.items():
                guidance = TEACHER_GUIDANCE if which == "teacher" else 1.0
                start = time.perf_counter()
                video = pipes[which](image, height=dm.HIGH, width=dm.HIGH, num_frames=dm.FRAMES, fps=dm.CONFIG.fps,
                                     motion_bucket_id=dm.CONFIG.motion_bucket_id, num_inference_steps=steps,
                                     max_guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                                     output_type="np").frames[0]
                seconds = time.perf_counter() - start
                reference = video if reference is None else reference
                rows[run].append({**video_report(video, picture), "psnr_vs_teacher_db": psnr(video, reference),
                                  "call_s": seconds, "photo": name, "seed": seed})
    summary = {run: {k: float(np.mean([r[k] for r in table if np.isfinite(r[k])]))
                     for k in ("first_frame_psnr", "mean_flow", "warp_consistency", "psnr_vs_teacher_db", "call_s")}
               for run, table in rows.items()}
    teacher_time = summary[f"teacher_{TEACHER_STEPS}"]["call_s"]
    for run in summary:
        summary[run]["speedup_vs_teacher"] = teacher_time / summary[run]["call_s"]
    return {"photos": list(dm.HELD_OUT_PHOTOS), "seeds": list(seeds), "frames": config.num_frames,
            "threads": torch.get_num_threads(), "summary": summary, "rows": rows}


def evaluate_defaults(teacher: Path, student: Path, seeds=EVAL_SEEDS) -> dict:
    """What `python -m svd_fast.sample` gives without flags, on the held-out photos: the teacher's
    saved sampling and the student's (and the student at DEFAULTS_SWEEP_STEPS under the same
    settings), each at the default motion bucket (first frame, flow, flow-warped consistency, wall
    time per call) and at buckets 0 and 255 (flow)."""
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.video_metrics import mean_flow, video_report

    pipes = {"teacher": SVDPipeline.from_pretrained(teacher, torch_dtype=torch.float32),
             "student": SVDPipeline.from_pretrained(student, torch_dtype=torch.float32)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    student_defaults = pipes["student"].saved_sampling()
    default_steps = student_defaults["num_inference_steps"]
    runs = {"teacher_defaults": ("teacher", pipes["teacher"].saved_sampling()),
            **{f"student_{k}_steps": ("student", {**student_defaults, "num_inference_steps": k})
               for k in sorted({*DEFAULTS_SWEEP_STEPS, default_steps})}}
    rows = {name: [] for name in runs}

    def video(which, settings, image, seed, bucket):
        return pipes[which](image, height=dm.HIGH, width=dm.HIGH, num_frames=dm.FRAMES, fps=dm.CONFIG.fps,
                            motion_bucket_id=bucket, generator=torch.Generator().manual_seed(seed), output_type="np",
                            **settings).frames[0]

    for name, image in dm.held_out_photos().items():
        picture = image.permute(1, 2, 0).numpy()
        for seed in seeds:
            for run, (which, settings) in runs.items():  # interleaved: a change of load hits every run alike
                start = time.perf_counter()
                frames = video(which, settings, image, seed, dm.CONFIG.motion_bucket_id)
                row = {**video_report(frames, picture), "call_s": time.perf_counter() - start, "photo": name, "seed": seed}
                for bucket in (0, 255):
                    row[f"mean_flow_bucket_{bucket}"] = mean_flow(video(which, settings, image, seed, bucket))
                rows[run].append(row)
    keys = ("first_frame_psnr", "mean_flow", "warp_consistency", "mean_flow_bucket_0", "mean_flow_bucket_255")
    summary = {}
    for run, table in rows.items():
        summary[run] = {k: float(np.mean([r[k] for r in table])) for k in keys}
        summary[run]["call_median_s"] = float(np.median([r["call_s"] for r in table]))
        summary[run]["settings"] = runs[run][1]
    summary["student_defaults"] = summary[f"student_{default_steps}_steps"]  # the same run, not sampled twice
    return {"photos": list(dm.HELD_OUT_PHOTOS), "seeds": list(seeds), "threads": torch.get_num_threads(),
            "summary": summary, "rows": rows}


def defaults_section(d: dict) -> list[str]:
    """The card's "Sampling defaults" section from evaluate_defaults' figures."""
    s = d["summary"]
    teacher, student = s["teacher_defaults"], s["student_defaults"]

    def settings(x):
        return (f"{x['num_inference_steps']} steps from " + ("pure noise" if x["image_init_sigma"] is None else
                                                             f"sigma {x['image_init_sigma']}")
                + (", no guidance" if x["max_guidance_scale"] == 1 else f", guidance 1 -> {x['max_guidance_scale']:g}")
                + (", frame 0 held" if x["keep_first_frame"] else "")
                + (", warp render" if x["render"] == "warp" else ""))

    def ff(v):
        return "inf" if v == float("inf") else f"{v:.2f}"

    lines = ["## Sampling defaults", "",
             f"Without flags the student samples as the teacher does by default: {settings(student['settings'])} "
             "(`svd_fast_sampling.json`; `--render frames` shows its own frames, `--steps` changes the count). "
             "The render moves the input image along the camera motion of the sampled frames "
             "(svd_fast.motion_render), so the first frame is the input and the colours are its own.",
             "", f"Held-out photos ({', '.join(d['photos'])}) x seeds {d['seeds']}, default motion bucket "
             f"{dm.CONFIG.motion_bucket_id} (flow also at buckets 0 and 255), fp32, {d['threads']} thread(s), "
             "whole calls timed interleaved (median):", "",
             "| sampling | first-frame PSNR (dB) | mean flow (px/frame) | flow-warped PSNR (dB) | flow at bucket 0 / 255 "
             "| s per video | vs the teacher's defaults |", "|---|---|---|---|---|---|---|"]
    for run, label in [("teacher_defaults", f"teacher, its defaults ({settings(teacher['settings'])})")] + \
            [(k, f"student, {s[k]['settings']['num_inference_steps']} step(s)" + (" (its defaults)" if
             s[k]["settings"] == student["settings"] else "")) for k in s if k.startswith("student_") and k != "student_defaults"]:
        r = s[run]
        lines.append(f"| {label} | {ff(r['first_frame_psnr'])} | {r['mean_flow']:.2f} | {r['warp_consistency']:.1f} | "
                     f"{r['mean_flow_bucket_0']:.2f} / {r['mean_flow_bucket_255']:.2f} | {r['call_median_s']:.3f} | "
                     f"{teacher['call_median_s'] / r['call_median_s']:.1f}x |")
    return lines + ["", f"The student's defaults: {teacher['call_median_s'] / student['call_median_s']:.1f}x the teacher's "
                    f"speed with {100 * student['mean_flow'] / teacher['mean_flow']:.0f}% of its motion at the same "
                    "steadiness (the encode, decode and render are a fixed cost of every call).", ""]


def card_head(out: Path, defaults: dict) -> list[str]:
    """The card's title, summary and sampling defaults: everything before "Distillation:"."""
    return ["# svd_fast default model, distilled (consistency, few steps)", "",
            "The embedded default model (svd_fast/assets/default_model) distilled by "
            "`training/recipes/distill_consistency.py` into a consistency model: sample it with "
            f"`--model svd_fast/assets/{out.name}`; it uses the `consistency` sampler without guidance (one UNet "
            "batch per step instead of the teacher's two).", "", *defaults_section(defaults)]


def write_card(out: Path, metrics: dict, defaults: dict, recipe: Recipe, train_s: float) -> None:
    s = metrics["summary"]
    lines = [
        *card_head(out, defaults),
        f"Distillation: {recipe.max_steps} steps, batch {recipe.batch_size}, lr {recipe.optim.lr:g}, teacher "
        f"{recipe.distill.solver} steps over {recipe.distill.skip} interval(s) of a "
        f"{recipe.distill.num_train_timesteps}-point Karras grid "
        f"(sigma {recipe.distill.sigma_min:g}..{recipe.distill.sigma_max:g}), teacher guidance "
        f"{recipe.distill.min_guidance_scale:g} -> {recipe.distill.max_guidance_scale:g} over frames, EMA target "
        f"{recipe.ema_decay}, pseudo-Huber c {recipe.distill.huber_c:g}; {train_s / 60:.0f} min on "
        f"{metrics['threads']} CPU threads.",
        "",
        f"Held-out photographs ({', '.join(metrics['photos'])}; never trained on), seeds {metrics['seeds']}, "
        f"{dm.HIGH}x{dm.HIGH}, {metrics['frames']} frames, fp32 on CPU. PSNR vs teacher: the frames against the "
        f"teacher's {TEACHER_STEPS}-step video of the same seed.",
        "",
        "| sampling | first-frame PSNR (dB) | mean flow (px/frame) | warp consistency (dB) | PSNR vs teacher (dB) "
        "| s per video | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    order = [f"teacher_{TEACHER_STEPS}", "teacher_4"] + sorted(k for k in s if k.startswith("student"))
    for run, r in ((k, s[k]) for k in order):
        versus = "(reference)" if run == f"teacher_{TEACHER_STEPS}" else f"{r['psnr_vs_teacher_db']:.2f}"
        lines.append(f"| {run.replace('_', ' ')} steps | {r['first_frame_psnr']:.2f} | {r['mean_flow']:.2f} | "
                     f"{r['warp_consistency']:.2f} | {versus} | {r['call_s']:.3f} | {r['speedup_vs_teacher']:.1f}x |")
    teacher, teacher_4, student = s[f"teacher_{TEACHER_STEPS}"], s["teacher_4"], s["student_4"]
    lines += ["", f"At 4 steps against the teacher's {TEACHER_STEPS}: {student['speedup_vs_teacher']:.1f}x the speed, "
              f"first frame {student['first_frame_psnr'] - teacher['first_frame_psnr']:+.2f} dB, mean flow "
              f"{100 * (student['mean_flow'] / teacher['mean_flow'] - 1):+.0f}% (issue 13's targets: >= 5x, within 1 dB, "
              f"within 25%). Against the teacher's own 4 Euler steps: first frame {student['first_frame_psnr']:.2f} vs "
              f"{teacher_4['first_frame_psnr']:.2f} dB, mean flow {student['mean_flow']:.2f} vs "
              f"{teacher_4['mean_flow']:.2f} px/frame (the teacher's {TEACHER_STEPS} steps: {teacher['mean_flow']:.2f}), "
              f"flow-warped consistency {student['warp_consistency']:.2f} vs {teacher_4['warp_consistency']:.2f} dB.",
              "", f"Each teacher step spans {recipe.distill.skip} interval(s) of the grid (LCM's skipping step): "
              f"{-(-(recipe.distill.num_train_timesteps - 1) // recipe.distill.skip)} consistency links join sigma_max to "
              "the boundary, so the student's high-noise jumps inherit few links' errors.",
              "", "The student runs without guidance and re-noises with fresh noise between steps (eta 1), so from "
              "2 steps on its video is another sample than the teacher's of the same seed: PSNR vs teacher measures "
              "how close one step lands to the teacher's trajectory end, not the quality of the multi-step video.",
              "Timings are of whole calls (encode, steps, decode) on a shared 2-core machine; bench/quality.py "
              "measures them interleaved."]
    write_text(out / "MODEL_CARD.md", "\n".join(lines) + "\n")


def refresh_card(out: Path, teacher: Path) -> dict:
    """A shipped student without retraining: its svd_fast_sampling.json from STUDENT_SAMPLING, its
    defaults re-measured against the teacher's (whose defaults may have changed), the card's head
    rewritten (the distillation's own figures below it are kept)."""
    from svd_fast.checkpoints import load_components
    from svd_fast.checkpoints.diffusers import write_sampling_defaults

    write_sampling_defaults(out, dataclasses.replace(load_components(out)["config"], **STUDENT_SAMPLING))
    defaults = evaluate_defaults(teacher, out)
    card = (out / "MODEL_CARD.md").read_text()
    body = card[card.index("\nDistillation:") + 1:]
    write_text(out / "MODEL_CARD.md", "\n".join(card_head(out, defaults)) + "\n" + body)
    return defaults


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=str(dm.REPO / "svd_fast" / "assets" / "default_model"))
    p.add_argument("--workdir", default=str(dm.REPO / "runs" / "distill_consistency"))
    p.add_argument("--out", default=str(dm.REPO / "svd_fast" / "assets" / "default_model_distilled"))
    p.add_argument("--shards", default=None, help="curated shards to reuse (default: made in the work folder)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--solver", default="euler", choices=("euler", "heun"))
    p.add_argument("--skip", type=int, default=10, help="grid intervals one teacher step spans (LCM's skipping step)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--refresh-card", action="store_true",
                   help="no training: write --out's sampling defaults, re-measure them against --teacher, rewrite the card's head")
    args = p.parse_args(argv)
    if args.refresh_card and not (Path(args.out) / "MODEL_CARD.md").is_file():
        p.error(f"--refresh-card: --out {args.out} is not a shipped model folder (no MODEL_CARD.md)")
    if args.refresh_card and not Path(args.teacher).is_dir():
        p.error(f"--refresh-card: --teacher {args.teacher} is not a model folder")
    torch.set_num_threads(args.threads)
    if args.refresh_card:
        sys.path.insert(0, str(dm.REPO))
        from bench.harness import machine_info
        from svd_fast.eval.multiview import machine_tag

        defaults = refresh_card(Path(args.out), Path(args.teacher))
        write_json(dm.REPO / "bench" / "results" / f"distilled-defaults-{machine_tag()}-{time.strftime('%Y-%m-%d')}.json",
                   {**defaults, "machine": machine_info()})
        print(json.dumps(defaults["summary"], indent=2))
        return 0
    from svd_fast.train.logs import setup_console_logging

    setup_console_logging(rank=0)
    work, out = Path(args.workdir), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.shards:
        shards = Path(args.shards)
    else:
        media = dm.fetch_media(dm.training_media().values())
        dm.render_source_videos(work / "videos" / "procedural", dm.Schedule().videos)
        dm.write_real_sources(work / "videos" / "real", media, dm.Schedule().pans_per_photo)
        shards = dm.curate(work / "videos", work / "curated")
    recipe = distill_recipe(Path(args.teacher), shards, work, args.steps, args.solver, args.skip)
    summary, spent = dm.train_resumed(recipe, work)
    export(Path(recipe.output_dir), out)
    metrics = evaluate(Path(args.teacher), out)
    defaults = evaluate_defaults(Path(args.teacher), out)
    write_json(work / "metrics.json", {**metrics, "defaults": defaults, "train": summary})
    write_card(out, metrics, defaults, recipe, spent)
    print(json.dumps(metrics["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
