"""VAE design lab for the default model: train a candidate VAE on multi-scale crops of real photos and
print the held-out photos' reconstruction PSNR every 100 steps.

    python training/recipes/vae_lab.py --groups 8 --steps 400 --threads 1

Training data: every photograph in svd_fast's media cache (~/.cache/svd_fast/media/files, filled by
`svd_fast.real_media.fetch_all()` and the default-model recipe) except the held-out ones, as random
square crops of 25-100% of the short side, area-resampled to 64 px: the same detail density as the
held-out evaluation (whole photos' centre squares scaled to 64 px). One frame per clip.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import default_model as dm
from svd_fast.layers import channels_last_
from svd_fast.train.autoencoder import (AutoencoderTraining, identity_frame_mixing, image_reconstruction, vae_loss,
                                        zero_init_residuals)
from svd_fast.vae import TemporalVAE
from svd_fast.video_io import load_image

MEDIA = os.path.expanduser("~/.cache/svd_fast/media/files")
SIZE = 64


def training_photos() -> list[torch.Tensor]:
    """(3, H, W) in [-1, 1] of each cached photo that is not held out and has a short side >= 96 px."""
    photos = []
    for path in sorted(glob.glob(os.path.join(MEDIA, "*"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in dm.HELD_OUT_PHOTOS or not path.lower().endswith((".png", ".jpg")):
            continue
        img = torch.from_numpy(np.array(load_image(path).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
        if min(img.shape[1:]) >= 96:
            photos.append(img)
    return photos


def crops(photos, n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, 3, SIZE, SIZE) random multi-scale square crops."""
    out = []
    for _ in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=g))]
        h, w = img.shape[1:]
        side = int(min(h, w) * (0.25 + 0.75 * float(torch.rand(1, generator=g))))
        y = int(torch.randint(h - side + 1, (1,), generator=g))
        x = int(torch.randint(w - side + 1, (1,), generator=g))
        out.append(F.interpolate(img[None, :, y:y + side, x:x + side], size=(SIZE, SIZE), mode="area")[0])
    return torch.stack(out)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=dm.CONFIG.vae.norm_num_groups, help="GroupNorm groups")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(dm.CONFIG.vae, norm_num_groups=args.groups)
    photos = training_photos()
    if not photos:
        raise SystemExit(f"error: no photos in {MEDIA}; run python -c 'from svd_fast.real_media import fetch_all; fetch_all()'")
    held = torch.stack(list(dm.held_out_photos(SIZE).values())) * 2 - 1
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    vae = channels_last_(identity_frame_mixing(zero_init_residuals(TemporalVAE(config)))).train()
    schedule = AutoencoderTraining(steps=args.steps, lr=args.lr, warmup_steps=50)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    start = time.time()
    print(f"{len(photos)} training photos; held out: {', '.join(dm.HELD_OUT_PHOTOS)}")
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        loss, _ = vae_loss(vae, crops(photos, args.batch, g), dm.VAE_TRAINING["kl_weight"], g,
                           dm.VAE_TRAINING["gradient_weight"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 100 == 0:
            vae.eval()
            rows = image_reconstruction(vae, held)
            vae.train()
            psnr = [r["psnr_db"] for r in rows]
            print(f"step {step + 1} ({time.time() - start:.0f} s): loss {loss.item():.4f}, held-out PSNR "
                  f"{' / '.join(f'{p:.1f}' for p in psnr)} dB, mean {np.mean(psnr):.2f}, worst colour shift "
                  f"{max(r['colour_shift_255'] for r in rows):.1f}/255", flush=True)


if __name__ == "__main__":
    main()
