"""VAE design lab for the default model: train a candidate VAE the way the recipe does (pans over
multi-scale crops of the training photographs, plus PatchPCA anchor) without the curated footage, and
print the held-out photos' reconstruction PSNR every 100 steps.

    python training/recipes/vae_lab.py --steps 1500 --anchor 1.0 --threads 1
    python training/recipes/vae_lab.py --steps 700 --anchor 5 --anchor-fade 0.5 --equivariance 1 --threads 1

Besides PSNR it prints the latent shift error (svd_fast.train.autoencoder.latent_shift_error) of the
held-out photos moved by 1, 2 and 4 px: how far the latent is from moving with the picture, which
a video UNet needs to learn motion as motion (0: it moves exactly; about 1 and more: a move of a
fraction of a latent pixel scrambles it, as it does for the PatchPCA code).

Training photos: the recipe's (default_model.training_media(), never the held-out ones), fetched
into svd_fast's media cache. Each clip is a short pan of a --window px square over a square crop of
25-100% of a photo's short side area-resampled to 64 px: the same detail density as the held-out
evaluation (whole photos' centre squares scaled to 64 px).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

import default_model as dm
from svd_fast.layers import channels_last_
from svd_fast.train.autoencoder import (AutoencoderTraining, identity_frame_mixing, image_reconstruction,
                                        latent_shift_error, vae_loss, zero_init_residuals)
from svd_fast.train.real_footage import photo_crop_clips
from svd_fast.vae import TemporalVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=dm.CONFIG.vae.norm_num_groups, help="GroupNorm groups")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=dm.VAE_TRAINING["lr"])
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--frames", type=int, default=dm.VAE_CLIP_FRAMES, help="frames per clip")
    parser.add_argument("--window", type=int, default=dm.VAE_WINDOW, help="training window side (px, <= 64)")
    parser.add_argument("--anchor", type=float, default=dm.VAE_TRAINING["anchor_weight"], help="PatchPCA anchor weight")
    parser.add_argument("--anchor-fade", type=float, default=1.0, help="anchor weight falls to 0 by this fraction of the steps")
    parser.add_argument("--equivariance", type=float, default=0.0, help="equivariance loss weight")
    parser.add_argument("--save", help="write the trained VAE here (safetensors)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    # checked before training: a run of an hour must not fail at its last line
    if not 0 < args.anchor_fade <= 1:
        parser.error(f"--anchor-fade must be in (0, 1], got {args.anchor_fade}")
    if args.save and not os.path.isdir(os.path.dirname(os.path.abspath(args.save))):
        parser.error(f"--save: folder {os.path.dirname(os.path.abspath(args.save))} does not exist")
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(dm.CONFIG.vae, norm_num_groups=args.groups)
    sources = [s for s in dm.training_media().values() if s.kind == "photo"]
    photos = dm.photo_tensors(dm.fetch_media(sources))
    anchor = dm.patch_pca(photos, config.downsample_factor, config.latent_channels)
    held = torch.stack(list(dm.held_out_photos(dm.HIGH).values())) * 2 - 1
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    vae = channels_last_(identity_frame_mixing(zero_init_residuals(TemporalVAE(config)))).train()
    schedule = AutoencoderTraining(steps=args.steps, lr=args.lr, warmup_steps=dm.VAE_TRAINING["warmup_steps"],
                                   anchor_weight=args.anchor, anchor_fade=args.anchor_fade)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    start = time.time()
    print(f"{len(photos)} training photos; held out: {', '.join(dm.HELD_OUT_PHOTOS)}")
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        clips = photo_crop_clips(photos, args.batch, args.frames, dm.HIGH, args.window, g)
        loss, parts = vae_loss(vae, clips, dm.VAE_TRAINING["kl_weight"], g, dm.VAE_TRAINING["gradient_weight"], anchor,
                               schedule.anchor_at(step), args.equivariance)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 100 == 0:
            vae.eval()
            rows = image_reconstruction(vae, held, num_frames=args.frames)
            single = np.mean([r["psnr_db"] for r in image_reconstruction(vae, held)])
            shifts = " / ".join(f"{latent_shift_error(vae, held, px):.2f}" for px in (1, 2, 4))
            vae.train()
            psnr = [r["psnr_db"] for r in rows]
            anchored = f"anchor {parts['anchor']:.3f}" if "anchor" in parts else "anchor off"
            print(f"step {step + 1} ({time.time() - start:.0f} s): loss {loss.item():.4f} ({anchored}), held-out PSNR "
                  f"{' / '.join(f'{p:.1f}' for p in psnr)} dB, mean {np.mean(psnr):.2f} (as one-frame clips {single:.2f}), "
                  f"worst colour shift {max(r['colour_shift_255'] for r in rows):.1f}/255, "
                  f"latent shift error at 1 / 2 / 4 px {shifts}", flush=True)
    if args.save:
        from svd_fast.checkpoints.io import save_safetensors

        save_safetensors(vae.state_dict(), args.save)  # atomic: a stopped run leaves no half-written file


if __name__ == "__main__":
    main()
