"""The CLIP image tower of SVD's conditioner (OpenCLIP ViT-H/14 in the released models), in plain PyTorch.

Parameter names are those of transformers' CLIPVisionModelWithProjection, so diffusers folders
(image_encoder/model.safetensors), sgm files (through checkpoints/open_clip.py) and transformers
itself read and write the same tensors. svd_fast runs its own module instead of transformers'
because importing transformers' CLIP costs ~4 s of every CLI start (it pulls torch._dynamo,
torch.distributed and torchao at import), several times what sampling the default model takes.

The computation is CLIP's ViT: patch embedding (conv, no bias), a class token, learned positions,
pre-LayerNorm, pre-norm transformer layers (attention with biased q/k/v/out projections, MLP with
the config's activation), post-LayerNorm of the class token, and the projection (no bias). The
embedding is not L2-normalised (as sgm and diffusers use it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from svd_fast.config import ImageEncoderConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
"""the `hidden_act` values CLIP vision configs use, by transformers' names"""


@dataclass
class CLIPVisionOutput:
    """image_embeds (B, projection_dim): the projected class token; pooler_output (B, hidden): before projection."""

    image_embeds: torch.Tensor
    pooler_output: torch.Tensor


class _Table(nn.Module):
    """A learned table (`.weight`, as nn.Embedding names it) without nn.Embedding's init: a normal_
    on the meta device (checkpoint loading builds there) imports torch._dynamo, 1.8 s."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, width))


class _Embeddings(nn.Module):
    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        width = config.hidden_size
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.patch_embedding = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        self.position_embedding = _Table((config.image_size // config.patch_size) ** 2 + 1, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head width), as CLIP
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = _Attention(width, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = _MLP(width, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))


class _VisionTransformer(nn.Module):
    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        eps = config.layer_norm_eps
        self.embeddings = _Embeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=eps)  # sic: transformers' name
        self.encoder = _Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pooled (post-LayerNorm) class token (B, hidden)."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x[:, 0])


class CLIPVisionTower(nn.Module):
    """CLIP image tower with projection; the state dict of transformers' CLIPVisionModelWithProjection."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.vision_model = _VisionTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        if not self.visual_projection.weight.is_meta:
            self.reset_parameters()

    @property
    def device(self) -> torch.device:  # diffusers pipelines ask their components for these
        return self.visual_projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_projection.weight.dtype

    def forward(self, pixel_values: torch.Tensor) -> CLIPVisionOutput:
        """pixel_values: (B, 3, image_size, image_size), CLIP-normalised (conditioner.clip_pixel_values)."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (size, size):
            raise ValueError(f"CLIP tower: expected pixel values (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}")
        pooled = self.vision_model(pixel_values)
        return CLIPVisionOutput(image_embeds=self.visual_projection(pooled), pooler_output=pooled)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """transformers' CLIP initialisation (initializer_range 0.02, factor 1): the starting point of
        svd_fast.train.image_encoder, as it was when this tower was transformers' module."""
        cfg = self.config
        width, depth = cfg.hidden_size, cfg.num_hidden_layers
        inner_std = width ** -0.5 * (2 * depth) ** -0.5
        emb = self.vision_model.embeddings
        nn.init.normal_(emb.class_embedding, std=width ** -0.5)
        nn.init.normal_(emb.patch_embedding.weight, std=0.02)
        nn.init.normal_(emb.position_embedding.weight, std=0.02)
        for layer in self.vision_model.encoder.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                nn.init.normal_(proj.weight, std=inner_std)
            nn.init.normal_(layer.self_attn.out_proj.weight, std=width ** -0.5)
            nn.init.normal_(layer.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(layer.mlp.fc2.weight, std=inner_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.visual_projection.weight, std=width ** -0.5)


__all__ = ["CLIPVisionTower", "CLIPVisionOutput", "ACTIVATIONS"]
