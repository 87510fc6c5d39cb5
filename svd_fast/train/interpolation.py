"""Training SVD-FI (paper appendix D.5): the conditioning built from a clip, and the start from an
image-to-video model.

A recipe whose model has conditioning 'interpolation' trains with `prepare_interpolation_inputs`
instead of the image-to-video conditioning (svd_fast.train.objective.prepare_inputs dispatches on
it). For a clip of T frames (T = 5 for the paper's 4x: frames 0 and 4 are the ends, 1-3 new):
- the conditioning latents are the VAE means of the first and the last true frame, noise-augmented
  in latent space (ln sigma_aug ~ N(cond_aug_mean, cond_aug_std^2)), at frames 0 and T-1, zeros in
  between (the UNet puts its learned mask embedding there), plus the mask channel [1, 0, ..., 0, 1];
- cross-attention gets the CLIP embeddings of both clean end frames (2 tokens);
- condition dropout (the unconditional branch of guidance) zeroes the conditioning latents with the
  mask (every frame then gets the mask embedding) and, separately, the CLIP tokens;
- with objective.interpolation_prior = 'flow' (models with a latent prior), `prior_latents`: the
  clip's ends interpolated by optical flow (flow_interpolate of the clean end frames, VAE means) in
  between, the augmented end latents at the ends (what the blend prior has there), zeros where
  the conditioning latents are dropped (the unconditional branch's prior): what prior='flow'
  hands the model at sampling, so the model learns to correct flow's errors, not the blend's;
- the loss is the usual EDM v-loss over all T frames. The end frames are denoised too, not only the
  middle ones: copying them from the conditioning is cheap to learn, and a model trained that way
  keeps the noisy end frames the sampler feeds back on the training distribution (with the loss on
  the middle frames only, the end frames' outputs would be untrained and drift during sampling).
"""
from __future__ import annotations

import torch

from svd_fast import conditioner
from svd_fast.denoiser import latent_prior
from svd_fast.interpolation import flow_interpolate, interpolation_context, interpolation_latents


@torch.no_grad()
def prepare_interpolation_inputs(batch: dict, vae, image_encoder, config, device, dtype=torch.float32) -> dict:
    """DiffusionObjective's arguments for SVD-FI from a data batch (svd_fast.train.data.collate).

    Random draws per sample from its seed, in a fixed order (svd_fast.train.objective._draws's
    scalars, then the clip's noise, then the two end frames' augmentation noise)."""
    from svd_fast.train.data import motion_bucket
    from svd_fast.train.objective import _draws, encode_frames

    frames = batch["frames"].to(device)
    b, t = frames.shape[:2]
    if t < 3:
        raise ValueError(f"interpolation training needs clips of >= 3 frames (two ends and a middle), got {t}")
    if bool(batch["image"].any()):
        raise ValueError("interpolation training takes videos only: set data.image_fraction = 0")
    draws = [_draws(int(seed), config) for seed in batch["seed"]]
    sigma = torch.tensor([d["sigma"] for d in draws], device=device)
    cond_aug = torch.tensor([d["cond_aug"] for d in draws], device=device)
    keep_embedding = torch.tensor([d["keep_embedding"] for d in draws], device=device)
    keep_latent = torch.tensor([d["keep_latent"] for d in draws], device=device)

    clean = encode_frames(vae, frames.flatten(0, 1))
    clean = clean.reshape(b, t, *clean.shape[1:])
    latents = clean * vae.config.scaling_factor
    noise = torch.stack([d["generator"].normal(latents.shape[1:]) for d in draws]).to(device)
    end_noise = torch.stack([d["generator"].normal((2, *clean.shape[2:])) for d in draws]).to(device)
    aug = cond_aug.reshape(-1, 1, 1, 1)
    cond = interpolation_latents(clean[:, 0] + aug * end_noise[:, 0], clean[:, -1] + aug * end_noise[:, 1], t)
    ends = ((frames[:, [0, -1]] + 1) / 2).clamp(0, 1)
    embeddings = conditioner.encode_image(image_encoder, ends.flatten(0, 1)).float().reshape(b, 2, 1, -1)
    context = interpolation_context(embeddings[:, 0], embeddings[:, 1])

    height = frames.shape[-2]
    motion = torch.tensor([motion_bucket(float(m), height) for m in batch["motion"]], device=device)
    added_time_ids = torch.stack([batch["fps"].to(device) - 1, motion, cond_aug], dim=1)
    image_latents = cond * keep_latent.reshape(-1, 1, 1, 1, 1)
    extra = {}
    if config.interpolation_prior == "flow":
        extra["prior_latents"] = flow_prior_latents(vae, image_latents, ends).to(dtype)
    return {
        "latents": latents.to(dtype),
        "noise": noise.to(dtype),
        "sigma": sigma,
        "image_latents": image_latents.to(dtype),
        "context": (context * keep_embedding.reshape(-1, 1, 1)).to(dtype),
        "added_time_ids": added_time_ids.to(dtype),
        "image_only_indicator": torch.zeros(b, t, device=device),
        **extra,
    }


@torch.no_grad()
def flow_prior_latents(vae, image_latents: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Unscaled prior latents (B, T, C, h, w) for the conditioning `image_latents` (B, T, C + 1, h, w)
    and the clean end frames `ends` (B, 2, 3, H, W) in [0, 1]: the blend prior's ends, flow_interpolate's
    frames (VAE means) in between; zeros for a clip whose conditioning latents are dropped."""
    from svd_fast.train.objective import encode_frames

    t = image_latents.shape[1]
    prior = latent_prior(image_latents.float(), 1.0, masked=True)
    pictures = ends.permute(0, 1, 3, 4, 2).float().cpu().numpy()
    for i in range(len(prior)):
        if image_latents[i, 0, -1].any():  # the mask channel is 1 at the ends unless the latents are dropped
            frames = torch.from_numpy(flow_interpolate(pictures[i, 0], pictures[i, 1], t)).permute(0, 3, 1, 2) * 2 - 1
            prior[i, 1:-1] = encode_frames(vae, frames[1:-1].to(prior.device))
    return prior


def unet_weights_from_image_model(weights: dict[str, torch.Tensor], latent_channels: int) -> dict[str, torch.Tensor]:
    """An SVD-FI UNet's starting weights from an image-to-video UNet's state dict.

    conv_in gains the mask channel with zero weights (so the start computes what the image model
    computes on the same latents), and the mask embedding starts at zero (the unconditional
    latent of the image model). Everything else is copied.
    """
    w = weights["conv_in.weight"]
    if w.shape[1] != 2 * latent_channels:
        raise ValueError(f"conv_in of the image model takes {w.shape[1]} channels, expected 2 x {latent_channels}")
    out = dict(weights)
    out["conv_in.weight"] = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)
    out["mask_embedding"] = torch.zeros(latent_channels, dtype=w.dtype)
    return out
