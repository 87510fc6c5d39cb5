"""Training the temporal VAE from scratch on clips (for small models such as the embedded default).

Loss per clip: L1 + MSE reconstruction of every frame through encoder -> latent sample ->
temporal decoder (which sees the clip's frames together), an L1 term on the image gradients
(edges and fine texture, which pixel losses alone let a small decoder blur away), plus a small KL
term keeping the latent distribution near N(0, I) as SD's KL-f8 autoencoder does; optionally an
anchor pulling the encoder's latent means towards the whitened principal components of the image's
patches (`PatchPCA`). Linear PCA of 4x4 patches already keeps natural photos at ~32 dB with 16
components, while the encoder, trained through the decoder alone, learns such a code slowly; the
anchor gives it that code as a direct target from the first step. After training,
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
    gradient_weight: float = 0.0
    """weight of the L1 loss between the horizontal and vertical pixel differences"""
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    """cosine decay from lr to lr * final_lr_fraction after warm-up (small noisy batches gain from it)"""
    log_every: int = 100
    anchor_weight: float = 0.0
    """weight of the MSE between the encoder's latent means and a PatchPCA code (0: no anchor)"""
    anchor_fade: float = 1.0
    """fraction of the steps after which the anchor weight has fallen linearly to 0 (1: constant)"""
    equivariance_weight: float = 0.0
    """weight of `equivariance_loss` (0: off): moving the picture by a fraction of a latent pixel
    or zooming it must move the latent the same way, for both encoder and decoder"""

    def anchor_at(self, step: int) -> float:
        if self.anchor_fade >= 1.0:
            return self.anchor_weight
        return self.anchor_weight * max(0.0, 1.0 - step / max(1.0, self.anchor_fade * self.steps))

    def lr_at(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps)
        progress = step / max(1, self.steps - 1)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * warmup * (self.final_lr_fraction + (1 - self.final_lr_fraction) * cosine)


class PatchPCA:
    """The principal components of an image's non-overlapping factor x factor patches, whitened:
    a closed-form linear autoencoder with the VAE's latent shape, (N, 3, H, W) <-> (N, k, H/f, W/f)."""

    def __init__(self, factor: int, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor):
        self.factor, self.mean, self.basis, self.scale = factor, mean, basis, scale

    @classmethod
    def fit(cls, images: torch.Tensor, factor: int, components: int) -> "PatchPCA":
        patches = cls._patches(images.double(), factor).reshape(-1, 3 * factor * factor)
        mean = patches.mean(0)
        variance, vectors = torch.linalg.eigh(torch.cov((patches - mean).T))
        order = variance.argsort(descending=True)[:components]
        return cls(factor, mean.float(), vectors[:, order].float(), variance[order].clamp_min(1e-12).sqrt().float())

    @staticmethod
    def _patches(images: torch.Tensor, factor: int) -> torch.Tensor:
        return torch.nn.functional.pixel_unshuffle(images, factor).permute(0, 2, 3, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        code = (self._patches(images.float(), self.factor) - self.mean) @ self.basis / self.scale
        return code.permute(0, 3, 1, 2)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        patches = (code.permute(0, 2, 3, 1) * self.scale) @ self.basis.T + self.mean
        return torch.nn.functional.pixel_shuffle(patches.permute(0, 3, 1, 2), self.factor)


def zero_init_residuals(vae):
    """Zero the last layer of every residual branch (ResBlock conv2, attention output), so each
    block starts as the identity: the deep GroupNorm network then trains faster from scratch."""
    with torch.no_grad():
        for name, module in vae.named_modules():
            if name.endswith(("conv2", "to_out.0")):
                for p in module.parameters(recurse=False):
                    p.zero_()
    return vae


def identity_frame_mixing(vae):
    """Start the decoder's last layer, a (3,1,1) conv mixing neighbouring frames' RGB, as the
    identity (centre tap = I, bias 0): a random init scrambles colours across frames and channels,
    and the first hundreds of steps go into undoing that."""
    conv = vae.decoder.time_conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(conv.weight.shape[0]):
            conv.weight[c, c, 1] = 1.0
    return vae


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the horizontal and vertical pixel differences of images a, b."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def random_similarity(count: int, generator: torch.Generator | None, shift: float, log_zoom: float) -> torch.Tensor:
    """(count, 2, 3) affine_grid matrices: a zoom about the centre by exp(U(-log_zoom, log_zoom)) and
    a shift of U(-shift, shift) in normalised coordinates (2 = the whole side), per sample."""
    u = torch.rand(count, 3, generator=generator) * 2 - 1
    scale = torch.exp(u[:, 0] * log_zoom)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = u[:, 1:] * shift
    return theta


def warp(images: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, C, H, W) resampled through affine_grid(theta) (bilinear, normalised coordinates,
    so the same theta is the same motion at any resolution) and the (N, 1, H, W) mask of the
    output pixels whose source lies inside the image."""
    grid = torch.nn.functional.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    moved = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1, keepdim=True).permute(0, 3, 1, 2).to(images.dtype)
    return moved, inside


def equivariance_loss(vae, frames: torch.Tensor, mean: torch.Tensor, z: torch.Tensor, num_frames: int,
                      generator: torch.Generator | None = None, shift_latent_px: float = 1.0,
                      log_zoom: float = 0.15) -> tuple[torch.Tensor, dict]:
    """The latent space must move as the picture does (EQ-VAE, Kouzelis et al. 2025, plus its
    encoder-side twin). With a random similarity transform tau per clip (a shift of up to
    `shift_latent_px` latent pixels and a zoom of up to exp(+-log_zoom)): decoder,
    |D(tau z) - tau x| (L1 + MSE in pixels); encoder, |E(tau x) - tau E(x)|^2 (latent means).
    Video models learn motion as a warp of these latents: a code that a one-pixel move scrambles
    (as non-overlapping patch codes are scrambled) makes every sub-latent-pixel motion a redraw.
    frames (B*T, 3, H, W); mean, z: the encoder's means and the latent draw decoded for them."""
    n = frames.shape[0] // num_frames
    shift = 2.0 * shift_latent_px / mean.shape[-1]
    theta = random_similarity(n, generator, shift, log_zoom).repeat_interleave(num_frames, dim=0)
    target, inside = warp(frames, theta)
    decoded = vae.decode(warp(z, theta)[0], num_frames=num_frames)
    err = (decoded - target) * inside
    pixels = inside.sum() * frames.shape[1]
    decoder = (err.abs().sum() + err.pow(2).sum()) / pixels
    moved_mean, latent_inside = warp(mean, theta)
    encoded, _ = vae.encode_moments(target)
    encoder = ((encoded - moved_mean).pow(2) * latent_inside).sum() / (latent_inside.sum() * mean.shape[1])
    return decoder + encoder, {"equivariance_decoder": float(decoder.detach()),
                               "equivariance_encoder": float(encoder.detach())}


def vae_loss(vae, clips: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None,
             gradient_weight: float = 0.0, anchor: PatchPCA | None = None,
             anchor_weight: float = 0.0, equivariance_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """clips (B, T, 3, H, W) in [-1, 1] -> (loss, {'l1', 'mse', 'gradient', 'kl', 'anchor',
    'equivariance_decoder', 'equivariance_encoder'})."""
    b, t = clips.shape[:2]
    frames = clips.flatten(0, 1)
    mean, logvar = vae.encode_moments(frames)
    z = vae.sample_latent(mean, logvar, generator)
    recon = vae.decode(z, num_frames=t)
    l1 = (recon - frames).abs().mean()
    mse = (recon - frames).pow(2).mean()
    grad = gradient_l1(recon, frames)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    loss = l1 + mse + gradient_weight * grad + kl_weight * kl
    parts = {"l1": float(l1.detach()), "mse": float(mse.detach()), "gradient": float(grad.detach()), "kl": float(kl.detach())}
    if anchor is not None and anchor_weight > 0:
        off = (mean.float() - anchor.encode(frames)).pow(2).mean()
        loss = loss + anchor_weight * off
        parts["anchor"] = float(off.detach())
    if equivariance_weight > 0:
        eq, eq_parts = equivariance_loss(vae, frames, mean, z, t, generator)
        loss = loss + equivariance_weight * eq
        parts.update(eq_parts)
    return loss, parts


def train_vae(config: VAEConfig, clips: Iterator[torch.Tensor], settings: AutoencoderTraining,
              seed: int = 0, on_log: Callable[[dict], None] | None = None, anchor: PatchPCA | None = None):
    """A TemporalVAE trained on `clips` (an iterator of (B, T, 3, H, W) batches); `anchor` (with
    settings.anchor_weight > 0) is the PatchPCA code the encoder is pulled towards."""
    from svd_fast.vae import TemporalVAE

    torch.manual_seed(seed)
    vae = channels_last_(identity_frame_mixing(zero_init_residuals(TemporalVAE(config)))).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(step)
        loss, parts = vae_loss(vae, next(clips), settings.kl_weight, gen, settings.gradient_weight, anchor,
                               settings.anchor_at(step), settings.equivariance_weight)
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


@torch.no_grad()
def image_reconstruction(vae, images: torch.Tensor, num_frames: int = 1) -> list[dict]:
    """Per image (N, 3, H, W) in [-1, 1], decoded as a still clip of `num_frames` copies (the
    temporal decoder's frame mixing sees neighbours as it does in a video; 1: a one-frame clip):
    PSNR (dB, on [0, 1], over every frame) and the colour shift, the largest |mean of a channel in
    the reconstruction - in the image| (in 1/255 units)."""
    frames = images.repeat_interleave(num_frames, dim=0)
    recon = vae.decode(vae.encode(frames), num_frames=num_frames).float().clamp(-1, 1)
    x = (images.float()[:, None] + 1) / 2
    y = (recon.unflatten(0, (len(images), num_frames)) + 1) / 2
    mse = (x - y).pow(2).mean(dim=(1, 2, 3, 4))
    shift = (x.mean(dim=(1, 3, 4)) - y.mean(dim=(1, 3, 4))).abs().amax(dim=1) * 255
    return [{"psnr_db": float(10 * torch.log10(1 / m)), "colour_shift_255": float(c)} for m, c in zip(mse, shift)]


@torch.no_grad()
def latent_shift_error(vae, images: torch.Tensor, shift_px: float) -> float:
    """How far the latent is from moving with the picture: images (N, 3, H, W) in [-1, 1] moved
    right by shift_px pixels; the mean squared difference between their latent means and the
    original's latent means moved by shift_px / downsample factor, over the latent pixels whose
    source lies inside the image, relative to the latent variance. 0: the latent moves exactly with
    the picture; about 2: the moved picture's latent is unrelated to the original's."""
    theta = torch.tensor([[1.0, 0.0, -2.0 * shift_px / images.shape[-1]], [0.0, 1.0, 0.0]]).expand(len(images), 2, 3)
    mean = vae.encode(images).float()
    moved, inside = warp(mean, theta)
    # one latent pixel in from the border: the encoder's zero padding sees the edge there
    inside = inside * torch.nn.functional.pad(torch.ones_like(inside[..., 1:-1, 1:-1]), (1, 1, 1, 1))
    err = ((vae.encode(warp(images.float(), theta)[0]).float() - moved).pow(2) * inside).sum()
    return float(err / (inside.sum() * mean.shape[1]) / mean.var())


@dataclasses.dataclass(frozen=True)
class DecoderFineTune:
    """A trained VAE's decoder fine-tuned with its encoder frozen (`finetune_decoder`)."""

    steps: int = 300
    lr: float = 1e-4
    warmup_steps: int = 20
    colour_weight: float = 10.0
    """weight of `colour_error` (pixel range [-1, 1]: 10 x 2/255 = 0.08, about the reconstruction loss)"""
    gradient_weight: float = 1.0
    log_every: int = 100

    def lr_at(self, step: int) -> float:
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / self.steps))


def colour_error(recon: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    """Mean over clips and channels of |mean of a channel over the clip's frames and pixels,
    reconstruction - original|; recon and clips (B, T, 3, H, W)."""
    return (recon.mean(dim=(1, 3, 4)) - clips.mean(dim=(1, 3, 4))).abs().mean()


def finetune_decoder(vae, clips: Iterator[torch.Tensor], settings: DecoderFineTune,
                     on_log: Callable[[dict], None] | None = None):
    """The decoder of a trained `vae` fine-tuned in place on `clips` ((B, T, 3, H, W) batches in
    [-1, 1]), the encoder frozen: the latents a UNet was trained on keep their meaning. Loss: L1 +
    MSE + gradient L1 of the reconstruction of the latent means, plus colour_error: a small decoder
    trained on pixel losses leaves each picture's channel means off by a few /255 (the default
    model's VAE: 3.0/255 on average over 64 px crops of its training photos), which no pixel loss
    weighs much. Returns the vae, in eval mode."""
    for p in vae.parameters():
        p.requires_grad_(False)
    decoder = [p for name, p in vae.named_parameters() if name.startswith("decoder")]
    for p in decoder:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(decoder, lr=settings.lr, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(settings.steps):
        vae.train()
        batch = next(clips)
        b, t = batch.shape[:2]
        frames = batch.flatten(0, 1)
        with torch.no_grad():
            mean = vae.encode(frames)
        recon = vae.decode(mean, num_frames=t)
        l1, mse = (recon - frames).abs().mean(), (recon - frames).pow(2).mean()
        colour = colour_error(recon.unflatten(0, (b, t)), batch)
        loss = l1 + mse + settings.gradient_weight * gradient_l1(recon, frames) + settings.colour_weight * colour
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(step)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, 1.0)
        optimizer.step()
        if (step + 1) % settings.log_every == 0 or step == 0:
            record = {"decoder_step": step + 1, "loss": float(loss.detach()), "colour_255": float(colour.detach()) * 127.5,
                      "seconds": time.perf_counter() - start}
            log.info("decoder step %d: loss %.4f (colour %.2f/255)", step + 1, record["loss"], record["colour_255"])
            if on_log is not None:
                on_log(record)
    for p in vae.parameters():
        p.requires_grad_(True)
    return vae.eval()
