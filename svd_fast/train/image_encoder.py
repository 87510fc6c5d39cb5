"""Training a small CLIP image tower from scratch (for small models such as the embedded default).

Without text or pretrained weights, the tower learns what the UNet needs from its embedding:
what is in the picture. Two objectives on the projected embedding (the one SVD conditions on):
- contrastive (InfoNCE, CLIP's symmetric loss): the first frame of a clip and a later frame of
  the same clip are a positive pair, every other clip of the batch a negative;
- distillation against simple targets: a linear probe regresses the image's 4x4 colour thumbnail,
  so colours and coarse layout are linearly present in the embedding.
Images go through svd_fast.conditioner.clip_pixel_values, the preprocessing used at sampling time.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from svd_fast import conditioner
from svd_fast.config import ImageEncoderConfig
from svd_fast.train.logs import log

THUMBNAIL = 4


@dataclasses.dataclass(frozen=True)
class ImageEncoderTraining:
    steps: int = 1000
    lr: float = 1e-3
    thumbnail_weight: float = 1.0
    warmup_steps: int = 50
    log_every: int = 100


def _embed(encoder, images: torch.Tensor) -> torch.Tensor:
    """Projected embeddings (N, D) of images (N, 3, H, W) in [-1, 1], with gradients."""
    pixels = conditioner.clip_pixel_values(((images + 1) / 2).clamp(0, 1), encoder.config.image_size)
    return encoder(pixels).image_embeds


def encoder_loss(encoder, probe: nn.Linear, logit_scale: nn.Parameter, clips: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """clips (B, T, 3, H, W): frame 0 against a random later frame of each clip."""
    b, t = clips.shape[:2]
    later = torch.randint(1, t, (b,)) if t > 1 else torch.zeros(b, dtype=torch.long)
    anchors, positives = clips[:, 0], clips[torch.arange(b), later]
    embeds = _embed(encoder, torch.cat([anchors, positives]))
    a, p = F.normalize(embeds[:b], dim=-1), F.normalize(embeds[b:], dim=-1)
    logits = logit_scale.exp().clamp(max=100) * a @ p.t()
    labels = torch.arange(b)
    contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    target = F.adaptive_avg_pool2d(torch.cat([anchors, positives]), THUMBNAIL).flatten(1)
    thumbnail = F.mse_loss(probe(embeds), target)
    accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    return contrastive, {"thumbnail": thumbnail, "contrastive": float(contrastive.detach()), "accuracy": accuracy}


def train_image_encoder(config: ImageEncoderConfig, clips: Iterator[torch.Tensor], settings: ImageEncoderTraining,
                        seed: int = 0, on_log: Callable[[dict], None] | None = None):
    """A CLIP image tower (svd_fast.clip_vision.CLIPVisionTower) trained on `clips` (an iterator of (B, T, 3, H, W) batches)."""
    torch.manual_seed(seed)
    encoder = conditioner.build_image_encoder(config).train()
    probe = nn.Linear(config.projection_dim, 3 * THUMBNAIL * THUMBNAIL)
    logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's initial temperature
    params = [*encoder.parameters(), *probe.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    start = time.perf_counter()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * min(1.0, (step + 1) / settings.warmup_steps)
        contrastive, parts = encoder_loss(encoder, probe, logit_scale, next(clips))
        loss = contrastive + settings.thumbnail_weight * parts["thumbnail"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % settings.log_every == 0 or step == 0:
            record = {"encoder_step": step + 1, "loss": float(loss.detach()), "contrastive": parts["contrastive"],
                      "thumbnail": float(parts["thumbnail"].detach()), "accuracy": parts["accuracy"],
                      "seconds": time.perf_counter() - start}
            log.info("image encoder step %d: loss %.4f (contrastive %.3f, thumbnail %.4f, pair accuracy %.2f)",
                     step + 1, record["loss"], parts["contrastive"], record["thumbnail"], parts["accuracy"])
            if on_log is not None:
                on_log(record)
    return encoder.eval()
