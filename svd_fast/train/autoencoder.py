"""Training the temporal VAE from scratch on clips (for small models such as the embedded default).

Loss per clip: L1 + MSE reconstruction of every frame through encoder -> latent sample ->
temporal decoder (which sees the clip's frames together), plus a small KL term keeping the
latent distribution near N(0, I) as SD's KL-f8 autoencoder does. After training,
`calibrate_scaling_factor` sets the factor that gives the UNet unit-variance latents (SD's
0.18215 was found the same way).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator

import torch

from svd_fast.config import VAEConfig
from svd_fast.layers import channels_last_
from svd_fast.train.logs import log


@dataclasses.dataclass(frozen=True)
class AutoencoderTraining:
    steps: int = 2000
    lr: float = 2e-3
    kl_weight: float = 1e-6
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    """cosine decay from lr to lr * final_lr_fraction after warm-up (small noisy batches gain from it)"""
    log_every: int = 100

    def lr_at(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps)
        progress = step / max(1, self.steps - 1)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * warmup * (self.final_lr_fraction + (1 - self.final_lr_fraction) * cosine)


def zero_init_residuals(vae):
    """Zero the last layer of every residual branch (ResBlock conv2, attention output), so each
    block starts as the identity: the deep GroupNorm network then trains faster from scratch."""
    with torch.no_grad():
        for name, module in vae.named_modules():
            if name.endswith(("conv2", "to_out.0")):
                for p in module.parameters(recurse=False):
                    p.zero_()
    return vae


def vae_loss(vae, clips: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """clips (B, T, 3, H, W) in [-1, 1] -> (loss, {'l1', 'mse', 'kl'})."""
    b, t = clips.shape[:2]
    frames = clips.flatten(0, 1)
    mean, logvar = vae.encode_moments(frames)
    z = vae.sample_latent(mean, logvar, generator)
    recon = vae.decode(z, num_frames=t)
    l1 = (recon - frames).abs().mean()
    mse = (recon - frames).pow(2).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    return l1 + mse + kl_weight * kl, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}


def train_vae(config: VAEConfig, clips: Iterator[torch.Tensor], settings: AutoencoderTraining,
              seed: int = 0, on_log: Callable[[dict], None] | None = None):
    """A TemporalVAE trained on `clips` (an iterator of (B, T, 3, H, W) batches)."""
    from svd_fast.vae import TemporalVAE

    torch.manual_seed(seed)
    vae = channels_last_(zero_init_residuals(TemporalVAE(config))).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(step)
        loss, parts = vae_loss(vae, next(clips), settings.kl_weight, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % settings.log_every == 0 or step == 0:
            record = {"vae_step": step + 1, "loss": float(loss.detach()), **parts, "seconds": time.perf_counter() - start}
            log.info("vae step %d: loss %.4f (l1 %.4f, mse %.5f, kl %.1f)", step + 1, record["loss"], parts["l1"],
                     parts["mse"], parts["kl"])
            if on_log is not None:
                on_log(record)
    return vae.eval()


@torch.no_grad()
def calibrate_scaling_factor(vae, clips: torch.Tensor) -> float:
    """1 / std of the latent means of `clips` (B, T, 3, H, W): scaled latents get unit variance."""
    mean = vae.encode(clips.flatten(0, 1))
    return float(1.0 / mean.float().std())


@torch.no_grad()
def reconstruction_psnr(vae, clips: torch.Tensor) -> float:
    """PSNR (dB, pixel range [-1, 1] so peak-to-peak 2) of encode-mean -> decode on clips."""
    t = clips.shape[1]
    frames = clips.flatten(0, 1)
    recon = vae.decode(vae.encode(frames), num_frames=t).clamp(-1, 1)
    mse = (recon - frames).pow(2).mean()
    return float(10 * torch.log10(4.0 / mse))

