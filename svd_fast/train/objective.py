"""The EDM v-prediction training objective of SVD and the conditioning it trains with.

For clean latents x0 (one clip), noise n and a noise level sigma shared by all frames of the clip,
the denoiser sees x = x0 + sigma * n and the loss is
    lambda(sigma) * mean((D(x; sigma) - x0)^2),   lambda(sigma) = (sigma^2 + 1) / sigma^2,
with ln sigma ~ N(P_mean, P_std^2) (svd_facts section 6). With the v-scalings this equals the mean
squared error of the raw network output against the v-target.

Conditioning as at sampling time (svd_facts section 4): the CLIP embedding of the clean first frame,
the VAE mean of the first frame after pixel-space noise augmentation (ln sigma_aug ~ N(-3, 0.5^2)),
copied over frames, and [fps - 1, motion bucket, sigma_aug]. For classifier-free guidance the
embedding and the latent are each zeroed with their own probability. An image sample (stage 1:
frames denoised as independent stills, the temporal path bypassed) is a set of one-frame videos,
so each still's conditioning latent is its own (noise-augmented) frame: conditioning every still
on frame 0 would teach the UNet that the conditioning frame is only a loose hint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from svd_fast import conditioner
from svd_fast.denoiser import Conditioning, Denoiser
from svd_fast.train.data import motion_bucket


@dataclass(frozen=True)
class ObjectiveConfig:
    """Noise distributions and conditioning dropout of one training stage."""

    p_mean: float = -1.2
    """mean of ln sigma"""
    p_std: float = 1.2
    """standard deviation of ln sigma"""
    cond_aug_mean: float = -3.0
    """mean of ln sigma_aug, the conditioning frame's noise augmentation (paper App. D.4)"""
    cond_aug_std: float = 0.5
    drop_image_embedding: float = 0.1
    """probability of zeroing the CLIP embedding (the unconditional branch of guidance)"""
    drop_image_latent: float = 0.1
    """probability of zeroing the conditioning latent"""
    interpolation_prior: str = "blend"
    """SVD-FI with a latent prior (UNetConfig.latent_prior): what the in-between frames of its prior are
    in training: 'blend' of the end latents (latent_prior), or 'flow', the clip's ends interpolated
    by optical flow (svd_fast.interpolation.flow_interpolate, through the VAE), as prior='flow' samples"""

    def validate(self) -> None:
        if self.p_std <= 0 or self.cond_aug_std < 0:
            raise ValueError(f"objective: p_std must be > 0 and cond_aug_std >= 0, got {self.p_std}, {self.cond_aug_std}")
        for name in ("drop_image_embedding", "drop_image_latent"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"objective.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.interpolation_prior not in ("blend", "flow"):
            raise ValueError(f"objective.interpolation_prior must be 'blend' or 'flow', got {self.interpolation_prior!r}")


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + 1) / sigma^2 (EDM weighting with sigma_data = 1)."""
    return (sigma**2 + 1) / sigma**2


class DiffusionObjective(nn.Module):
    """Wraps the UNet so that forward returns the per-clip weighted denoising loss.

    This is the module the training engine (DeepSpeed or plain) owns; the frozen VAE and image
    encoder stay outside it and prepare its inputs (see `prepare_inputs`).
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, latents, noise, sigma, image_latents, context, added_time_ids, image_only_indicator,
                prior_latents=None):
        """All tensors batched per clip: latents/noise/image_latents (B, T, C, h, w), sigma (B,);
        prior_latents: Conditioning.prior_latents (SVD-FI's flow prior), else None.

        Returns the loss of each clip, (B,) float32.
        """
        x = latents + sigma.reshape(-1, 1, 1, 1, 1) * noise
        cond = Conditioning(image_latents, context, added_time_ids, image_only_indicator, prior_latents)
        denoised = Denoiser(self.unet)(x, sigma, cond).float()
        error = (denoised - latents.float()).pow(2).mean(dim=(1, 2, 3, 4))
        return loss_weight(sigma.float()) * error


ENCODE_CHUNK = 8
"""frames the frozen VAE encodes at once (bounds the conditioning pass's memory)"""


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor) -> torch.Tensor:
    """Unscaled VAE means (fp32) of frames (N, 3, H, W) in [-1, 1], ENCODE_CHUNK frames at a time."""
    dtype = next(vae.parameters()).dtype
    return torch.cat([vae.encode(chunk.to(dtype)).float() for chunk in frames.split(ENCODE_CHUNK)])


@torch.no_grad()
def prepare_inputs(batch: dict, vae, image_encoder, config: ObjectiveConfig, device, dtype=torch.float32,
                   conditioning: str = "image") -> dict:
    """Turn a data batch (svd_fast.train.data.collate) into DiffusionObjective's arguments.

    Every random draw of sample i comes from a generator seeded with batch['seed'][i], in a fixed
    order, so a sample's noise does not depend on batch composition, world size or resumption.
    conditioning: the model's SVDConfig.conditioning ('interpolation': svd_fast.train.interpolation).
    """
    if conditioning == "interpolation":
        from svd_fast.train.interpolation import prepare_interpolation_inputs

        return prepare_interpolation_inputs(batch, vae, image_encoder, config, device, dtype)
    frames = batch["frames"].to(device)
    b, t = frames.shape[:2]
    draws = [_draws(int(seed), config) for seed in batch["seed"]]
    sigma = torch.tensor([d["sigma"] for d in draws], device=device)
    cond_aug = torch.tensor([d["cond_aug"] for d in draws], device=device)
    keep_embedding = torch.tensor([d["keep_embedding"] for d in draws], device=device)
    keep_latent = torch.tensor([d["keep_latent"] for d in draws], device=device)

    latents = encode_frames(vae, frames.flatten(0, 1)) * vae.config.scaling_factor
    latents = latents.reshape(b, t, *latents.shape[1:])
    first = frames[:, 0]
    cond_noise = torch.stack([d["generator"].normal(first.shape[1:]) for d in draws]).to(device)
    cond_latent = encode_frames(vae, first + cond_aug.reshape(-1, 1, 1, 1) * cond_noise)
    context = conditioner.encode_image(image_encoder, ((first + 1) / 2).clamp(0, 1)).float()
    noise = torch.stack([d["generator"].normal(latents.shape[1:]) for d in draws]).to(device)
    image_latents = cond_latent[:, None].repeat(1, t, 1, 1, 1)
    for i in batch["image"].nonzero().flatten().tolist():
        if t > 1:  # each still conditions on itself (drawn after the clip's noise: video draws unchanged)
            later = frames[i, 1:]
            later_noise = draws[i]["generator"].normal(later.shape).to(device)
            image_latents[i, 1:] = encode_frames(vae, later + cond_aug[i] * later_noise)

    height = frames.shape[-2]
    motion = torch.tensor([motion_bucket(float(m), height) for m in batch["motion"]], device=device)
    added_time_ids = torch.stack([batch["fps"].to(device) - 1, motion, cond_aug], dim=1)
    if "elevation" in batch:  # SVD-MV: the elevation is a fourth id (conditioner.multiview_time_ids)
        added_time_ids = torch.cat([added_time_ids, batch["elevation"].to(device)[:, None]], dim=1)
    indicator = batch["image"].to(device).float()[:, None].expand(b, t).contiguous()
    return {
        "latents": latents.to(dtype),
        "noise": noise.to(dtype),
        "sigma": sigma,
        "image_latents": (image_latents * keep_latent.reshape(-1, 1, 1, 1, 1)).to(dtype),
        "context": (context * keep_embedding.reshape(-1, 1, 1)).to(dtype),
        "added_time_ids": added_time_ids.to(dtype),
        "image_only_indicator": indicator,
    }


class _SampleRandom:
    """torch.Generator on CPU with a `normal(shape)` helper (CPU draws: identical on any device)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.gen)

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.gen))


def _draws(seed: int, config: ObjectiveConfig) -> dict:
    """The scalar random choices of one sample, then its generator for the tensor draws."""
    rng = _SampleRandom(seed)
    sigma = float(torch.exp(config.p_mean + config.p_std * rng.normal(())))
    cond_aug = float(torch.exp(config.cond_aug_mean + config.cond_aug_std * rng.normal(())))
    keep_embedding = float(rng.uniform() >= config.drop_image_embedding)
    keep_latent = float(rng.uniform() >= config.drop_image_latent)
    return {"sigma": sigma, "cond_aug": cond_aug, "keep_embedding": keep_embedding, "keep_latent": keep_latent,
            "generator": rng}
