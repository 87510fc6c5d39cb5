"""Image conditioning of SVD: input images to tensors, the CLIP image embedding, the micro-conditioning vector.

Every function reproduces what diffusers' StableVideoDiffusionPipeline does for PIL images and
for float arrays/tensors in [0, 1]. Where diffusers is inconsistent we choose one rule and say so:
- uint8 arrays/tensors are divided by 255 on both paths (diffusers' VAE path would not rescale them,
  and its CLIP path divides float numpy arrays by 255 a second time);
- tensors are resized for CLIP like every other input (diffusers feeds tensors to CLIP without the
  resize, which only works for 224x224 tensors, where the resize is the identity);
- grayscale and RGBA inputs become RGB (PIL `convert("RGB")`, which drops alpha; for arrays the
  single channel is repeated / the 4th channel dropped) instead of failing inside the model.
"""
from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from svd_fast.config import ImageEncoderConfig

# OpenAI CLIP normalisation, used by OpenCLIP ViT-H/14 and hard-coded in sgm's image embedder.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_image_encoder(config: ImageEncoderConfig):
    """svd_fast's CLIP image tower for this config (svd_fast.clip_vision; transformers' parameter
    names), with transformers' random initialisation: use the checkpoint loaders for real weights.
    Build it under `torch.device("meta")` to skip the init."""
    from svd_fast.clip_vision import CLIPVisionTower

    return CLIPVisionTower(config).eval()


def _rgb_channels(x: torch.Tensor, what: str) -> torch.Tensor:
    """(B, C, H, W) with C in {1, 3, 4} -> (B, 3, H, W)."""
    channels = x.shape[1]
    if channels == 1:
        return x.expand(-1, 3, -1, -1)
    if channels == 4:
        return x[:, :3]
    if channels != 3:
        raise ValueError(f"{what}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels, got shape {tuple(x.shape)}")
    return x


def _unit_range(x: torch.Tensor, what: str) -> torch.Tensor:
    """uint8 -> /255; floats must already be in [0, 1]. Returns float32."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{what}: expected uint8 or floating-point pixels, got {x.dtype}")
    x = x.float()
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"{what}: float pixels must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]")
    return x


def _pil_to_tensor(images: list) -> torch.Tensor:
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"image: all images of a batch need the same size, got {sorted(sizes)}")
    arrays = [np.asarray(im if im.mode == "RGB" else im.convert("RGB")).astype(np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def image_to_tensor(image) -> torch.Tensor:
    """Any supported image input -> float32 (B, 3, H, W) in [0, 1] on the input's device.

    Accepts a PIL image or a list of them; a numpy array (H, W), (H, W, C) or (B, H, W, C); a
    tensor (C, H, W) or (B, C, H, W); or a list of arrays / tensors (concatenated). uint8 pixels
    are scaled by 1/255, float pixels must be in [0, 1]. C may be 1, 3 or 4.
    """
    items = image if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("image: got an empty list")
    kinds = {type(i) for i in items}
    if all(isinstance(i, PIL.Image.Image) for i in items):
        return _pil_to_tensor(items)
    if all(isinstance(i, np.ndarray) for i in items):
        arrays = [a[:, :, None] if a.ndim == 2 else a for a in items]
        if any(a.ndim not in (3, 4) for a in arrays):
            raise ValueError(f"image: numpy arrays must be (H, W), (H, W, C) or (B, H, W, C), got {[a.shape for a in items]}")
        batch = np.concatenate([a if a.ndim == 4 else a[None] for a in arrays])
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        return _rgb_channels(_unit_range(x, "image"), "image").contiguous()
    if all(isinstance(i, torch.Tensor) for i in items):
        if any(t.ndim not in (3, 4) for t in items):
            raise ValueError(f"image: tensors must be (C, H, W) or (B, C, H, W), got {[tuple(t.shape) for t in items]}")
        x = torch.cat([t if t.ndim == 4 else t[None] for t in items])
        return _rgb_channels(_unit_range(x, "image"), "image").contiguous()
    names = sorted(k.__name__ for k in kinds)
    raise ValueError(f"image: expected PIL images, numpy arrays or torch tensors (not mixed), got {names}")


def preprocess_image(image, height: int, width: int, resize_mode: str = "default") -> torch.Tensor:
    """The pipeline's image for the VAE: float32 (B, 3, height, width) in [-1, 1].

    diffusers VaeImageProcessor.preprocess semantics: PIL images are resized with PIL's Lanczos
    filter to exactly (height, width) (aspect ratio not kept); arrays and tensors are resized with
    nearest-neighbour interpolation. resize_mode="crop" (PIL only) instead scales to cover the
    target and crops the centre, as diffusers' `_resize_and_crop`.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if resize_mode not in ("default", "crop"):
        raise ValueError(f"resize_mode must be 'default' or 'crop', got {resize_mode!r}")
    items = image if isinstance(image, (list, tuple)) else [image]
    if items and all(isinstance(i, PIL.Image.Image) for i in items):
        resize = _resize_and_crop if resize_mode == "crop" else _resize_pil
        x = _pil_to_tensor([resize(i if i.mode == "RGB" else i.convert("RGB"), width, height) for i in items])
    elif resize_mode == "crop":
        raise ValueError("resize_mode='crop' is only supported for PIL images")
    else:
        x = F.interpolate(image_to_tensor(image), size=(height, width))  # diffusers: default 'nearest'
    return x * 2.0 - 1.0


def _resize_pil(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    return image.resize((width, height), resample=PIL.Image.Resampling.LANCZOS)


def _resize_and_crop(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Scale (Lanczos) so the image covers width x height, keep the centre (diffusers' rounding)."""
    if width / height > image.width / image.height:
        new_w, new_h = width, image.height * width // image.width
    else:
        new_w, new_h = image.width * height // image.height, height
    resized = _resize_pil(image, new_w, new_h)
    canvas = PIL.Image.new("RGB", (width, height))
    canvas.paste(resized, box=(width // 2 - new_w // 2, height // 2 - new_h // 2))
    return canvas


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-x.pow(2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """Depthwise 1-D convolution along H (axis=2) or W (axis=3) with reflect padding.

    An axis no longer than the padding cannot be reflected (diffusers fails there); it only occurs
    when upscaling, where the kernel is the identity (sigma 0.001), so replicate padding gives
    the same result."""
    pad = (kernel.numel() - 1) // 2
    channels = x.shape[1]
    mode = "reflect" if x.shape[axis] > pad else "replicate"
    if axis == 3:
        weight = kernel.reshape(1, 1, 1, -1)
        x = F.pad(x, (pad, pad, 0, 0), mode=mode)
    else:
        weight = kernel.reshape(1, 1, -1, 1)
        x = F.pad(x, (0, 0, pad, pad), mode=mode)
    weight = weight.to(x).expand(channels, 1, *weight.shape[2:])
    return F.conv2d(x, weight, groups=channels)


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Gaussian blur then bicubic resize (align_corners=True): kornia's antialiased resize that
    sgm uses before CLIP, as diffusers reimplements it (`_resize_with_antialiasing`).

    sigma = max((scale - 1) / 2, 0.001) per axis; kernel size int(max(4 sigma, 3)) made odd.
    """
    h, w = x.shape[-2:]
    sigmas = [max((h / size[0] - 1.0) / 2.0, 0.001), max((w / size[1] - 1.0) / 2.0, 0.001)]
    sizes = [int(max(4.0 * s, 3)) for s in sigmas]
    sizes = [k + 1 if k % 2 == 0 else k for k in sizes]
    x = _blur_axis(x, _gaussian_kernel(sizes[1], sigmas[1]), axis=3)
    x = _blur_axis(x, _gaussian_kernel(sizes[0], sigmas[0]), axis=2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def clip_pixel_values(image, image_size: int = 224) -> torch.Tensor:
    """CLIP input: [0, 1] -> [-1, 1] -> antialiased resize to image_size -> [0, 1] -> mean/std.

    The resize runs on [-1, 1] values to match sgm, which embeds the [-1, 1] model input.
    Returns float32 (B, 3, image_size, image_size).
    """
    x = image_to_tensor(image) * 2.0 - 1.0
    x = (resize_with_antialiasing(x, (image_size, image_size)) + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std


def encode_image(image_encoder, image) -> torch.Tensor:
    """CLIP image embedding (B, 1, projection_dim) in the encoder's dtype and device.

    image_encoder: svd_fast.clip_vision.CLIPVisionTower, or transformers' CLIPVisionModelWithProjection
    (diffusers pipelines; both return `.image_embeds`). The projected pooled embedding is
    not L2-normalised (as in sgm and diffusers). No CFG duplication here: the unconditional
    embedding of SVD is zeros (the pipeline builds it).
    """
    param = next(image_encoder.parameters())
    pixels = clip_pixel_values(image, image_encoder.config.image_size)
    with torch.no_grad():
        embeds = image_encoder(pixels.to(device=param.device, dtype=param.dtype)).image_embeds
    return embeds.unsqueeze(1)


def added_time_ids(
    fps: float,
    motion_bucket_id: float,
    noise_aug_strength: float,
    batch: int,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Micro-conditioning vector (batch, 3) = [fps - 1, motion_bucket_id, noise_aug_strength].

    `fps` is frames per second as diffusers' pipeline takes it (default 7): SVD was conditioned on
    fps_id = fps - 1, so the 1 is subtracted here, as diffusers does (sgm scripts pass fps_id
    directly, default 6 = fps 7). noise_aug_strength enters as the raw sigma (0.02), not log sigma.
    The conditional and unconditional CFG halves use the same ids.
    """
    if batch < 1:
        raise ValueError(f"added_time_ids: batch must be >= 1, got {batch}")
    for name, value in (("fps", fps), ("motion_bucket_id", motion_bucket_id), ("noise_aug_strength", noise_aug_strength)):
        if not math.isfinite(value):
            raise ValueError(f"added_time_ids: {name} must be a finite number, got {value}")
    ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=dtype, device=device)
    return ids.repeat(batch, 1)


def multiview_time_ids(
    elevation_deg,
    fps: float,
    motion_bucket_id: float,
    noise_aug_strength: float,
    batch: int,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """SVD-MV micro-conditioning (batch, 4) = [fps - 1, motion_bucket_id, noise_aug_strength, elevation].

    The camera elevation of the orbit, in degrees (a number, or one per sample), is appended as a
    fourth id. The UNet embeds every id with the same sinusoid of width d = addition_time_embed_dim,
    so its vector condition (projection_class_embeddings_input_dim = 4 d) is
        [emb(fps - 1) | emb(motion_bucket_id) | emb(noise_aug_strength) | emb(elevation)],
        emb(v) = [cos(v f_0) .. cos(v f_{d/2-1}) | sin(v f_0) .. sin(v f_{d/2-1})], f_i = 10000^(-2i/d):
    the sine and cosine of the elevation at d/2 frequencies from 1 per degree (a period of 6.3
    degrees) down, appended to the image model's vector (paper section 4.5; SV3D embeds its camera
    angles with the same sinusoid). A multi-view model is trained with fps and motion bucket fixed
    (its saved sampling defaults), so those two ids are constants that keep the image model's
    embedding of them; SV3D drops them instead.
    """
    ids = added_time_ids(fps, motion_bucket_id, noise_aug_strength, batch, dtype, device)
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float64).reshape(-1)
    if len(elevation) not in (1, batch):
        raise ValueError(f"multiview_time_ids: got {len(elevation)} elevations for a batch of {batch}")
    if not torch.isfinite(elevation).all() or elevation.abs().max() > 90:
        raise ValueError(f"elevation must be a finite angle in [-90, 90] degrees, got {elevation.tolist()}")
    column = elevation.expand(batch).to(dtype=dtype, device=ids.device)[:, None]
    return torch.cat([ids, column], dim=1)
