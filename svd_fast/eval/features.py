"""Video feature extractors for FVD: a callable (T, H, W, 3) float32 video in [0, 1] -> 1-D features.

`--features` picks one:
- `default` (or `model`): the in-world extractor below, from the evaluated model's own encoders
  (default: the embedded default model); runs offline, but its figures compare only with
  figures from the same encoders, never with published FVDs;
- `i3d`: the Kinetics-400 I3D that published FVDs use (weights from `--i3d-weights`);
- `MODULE:CALLABLE`: any importable callable with the contract above (a function, or an object
  built at import time that holds its model), e.g. `mypkg.videofeat:extract`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class ModelFeatures:
    """In-world FVD features from an SVD model's CLIP image tower and VAE encoder, per clip:
    CLIP embedding averaged over frames and its mean frame-to-frame change (appearance and how
    fast it changes), and the VAE latent's per-channel spatial mean, spatial std and mean
    frame-to-frame change (colour/texture statistics and low-level motion). Frames are resized to
    the model's sampling size first, so every clip is seen at the resolution the model works at."""

    def __init__(self, model=None, device="cpu"):
        from svd_fast.pipeline import SVDPipeline

        pipe = SVDPipeline.from_pretrained(model_path(model), torch_dtype=torch.float32, device=device)
        self.vae, self.image_encoder, self.device = pipe.vae, pipe.image_encoder, torch.device(device)
        self.size = (pipe.config.height, pipe.config.width)

    @torch.no_grad()
    def __call__(self, video: np.ndarray) -> np.ndarray:
        from svd_fast.conditioner import encode_image

        if len(video) < 2:
            raise ValueError(f"in-world FVD features need at least 2 frames per clip, got {len(video)}")
        x = torch.as_tensor(np.asarray(video, np.float32)).permute(0, 3, 1, 2).to(self.device)
        x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        clip = encode_image(self.image_encoder, x)[:, 0].float()  # (T, D)
        z = self.vae.encode(x * 2 - 1).float()  # (T, C, h, w)
        parts = [clip.mean(0), (clip[1:] - clip[:-1]).abs().mean(0),
                 z.mean((0, 2, 3)), z.std(dim=(2, 3)).mean(0), (z[1:] - z[:-1]).abs().mean((0, 2, 3))]
        return torch.cat(parts).cpu().numpy().astype(np.float64)


class I3DFeatures:
    """FVD's embedding: the 400 Kinetics logits of I3D over the whole clip it is given (the CLI
    gives FVD's 16 frames unless --frames says otherwise; svd_fast.eval.i3d)."""

    def __init__(self, weights, device="cpu"):
        from svd_fast.eval.i3d import load_i3d

        self.model, self.device = load_i3d(weights, device), torch.device(device)

    @torch.no_grad()
    def __call__(self, video: np.ndarray) -> np.ndarray:
        from svd_fast.eval.i3d import preprocess

        return self.model(preprocess(video, frames=None)[None].to(self.device))[0].double().cpu().numpy()


def import_callable(spec: str):
    """'package.module:attr.attr' -> the callable it names; one-line errors for each way it can fail."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--features {spec!r}: expected 'default', 'i3d' or MODULE:CALLABLE")
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--features {spec!r}: cannot import {module_name!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--features {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--features {spec!r}: {attr!r} is not callable")
    return target


def resolve_extractor(spec: str, *, i3d_weights=None, model=None, device="cpu"):
    """The extractor `--features spec` names, and the clip length it needs (None: any)."""
    if spec in ("default", "model"):
        return ModelFeatures(model, device), None
    if spec == "i3d":
        from svd_fast.eval.i3d import FRAMES

        return I3DFeatures(i3d_weights, device), FRAMES
    return import_callable(spec), None


def extract(extractor, videos: list[np.ndarray], names: list[str]) -> np.ndarray:
    """(N, D) features of uint8 videos (converted to [0, 1] floats); names say which clip failed."""
    rows = []
    for name, video in zip(names, videos):
        try:
            row = np.asarray(extractor(video.astype(np.float32) / 255.0), np.float64).reshape(-1)
        except ValueError as err:
            raise ValueError(f"features of {name}: {err}") from err
        if rows and row.shape != rows[0].shape:
            raise ValueError(f"features of {name} have {row.size} values, earlier clips {rows[0].size}")
        if not np.all(np.isfinite(row)):
            raise ValueError(f"features of {name} are not finite")
        rows.append(row)
    return np.stack(rows)


def model_path(model) -> Path:
    """--model's folder or file ('default' or None: the embedded default model), or a one-line error."""
    from svd_fast.sample import DEFAULT_MODEL

    path = DEFAULT_MODEL if model in (None, "default") else Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    return path
