"""The spatiotemporal UNet of Stable Video Diffusion (sgm VideoUNet).

Parameter names and shapes are identical to diffusers' UNetSpatioTemporalConditionModel, so a
diffusers checkpoint loads as is and the sgm layout is a key mapping (svd_fast.checkpoints.sgm).

Activations stay frame-major, (B*T, C, H, W) in channels_last memory, for the whole network:
spatial layers treat frames as a batch, temporal layers (GroupNorm pooled over a clip, the (3,1,1)
conv, attention over frames) reach the time axis through svd_fast.layers without permuted copies,
and the tokens a transformer sees, (B*T, H*W, C), are a view of the channels_last feature map.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from svd_fast import layers
from svd_fast.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid [cos | sin] of t (any shape, flattened) in fp32, as sgm and diffusers embed scalars."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.reshape(-1).float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def add_linear(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """residual + linear(x), adding into the fresh GEMM output: one pass, no extra allocation.

    Autograd-safe: a linear layer's backward does not need its output, and residual is untouched.
    """
    return linear(x).add_(residual)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose forward goes through layers.group_norm (fp32 statistics, fused SiLU).

    `per_clip` pools the statistics over all frames of a clip, as sgm's 5-D temporal norms do.
    """

    def __init__(self, channels: int, eps: float, groups: int = 32):
        super().__init__(groups, channels, eps=eps)

    def forward(self, x, silu: bool = False, num_frames: int | None = None):
        return layers.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, silu, num_frames)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear on a sinusoid (diffusers names: linear_1, linear_2)."""

    def __init__(self, in_dim: int, dim: int, out_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, out_dim or dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """Spatial ResBlock: GN-SiLU-conv3x3, + time embedding, GN-SiLU-conv3x3, residual."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, eps: float):
        super().__init__()
        self.norm1 = GroupNorm(c_in, eps)
        self.conv1 = layers.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, c_out)
        self.norm2 = GroupNorm(c_out, eps)
        self.conv2 = layers.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = layers.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, emb_act):
        """emb_act: SiLU of the per-frame embedding, (B*T, temb_dim)."""
        h = self.conv1(self.norm1(x, silu=True))
        h = h.add_(self.time_emb_proj(emb_act)[:, :, None, None])  # h: fresh conv output
        h = self.conv2(self.norm2(h, silu=True))
        return h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))


class TemporalResnetBlock(nn.Module):
    """Temporal ResBlock: (3,1,1) convs over frames; GroupNorm statistics pooled over the clip.

    forward returns only the residual branch h; the caller adds it (blended) to its input.
    """

    def __init__(self, channels: int, temb_dim: int, eps: float):
        super().__init__()
        self.norm1 = GroupNorm(channels, eps)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.time_emb_proj = nn.Linear(temb_dim, channels)
        self.norm2 = GroupNorm(channels, eps)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x, emb_act, num_frames):
        h = self.norm1(x, silu=True, num_frames=num_frames)
        h = layers.temporal_conv(h, self.conv1.weight, self.conv1.bias, num_frames)
        h = h.add_(self.time_emb_proj(emb_act)[:, :, None, None])  # h: fresh conv output
        h = self.norm2(h, silu=True, num_frames=num_frames)
        return layers.temporal_conv(h, self.conv2.weight, self.conv2.bias, num_frames)


class AlphaBlender(nn.Module):
    """Learned mix of the spatial and temporal paths ('learned_with_images').

    alpha = sigmoid(mix_factor) weighs the spatial path; frames flagged image-only get alpha = 1,
    which drops the temporal path exactly (used for image batches in training).
    """

    def __init__(self, mix_factor: float = 0.5):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([mix_factor]))

    def alpha(self, image_only_indicator: torch.Tensor) -> torch.Tensor:
        """Per-frame alpha of shape (B*T,) in fp32."""
        learned = torch.sigmoid(self.mix_factor.float())
        flags = image_only_indicator.reshape(-1).bool()
        return torch.where(flags, torch.ones_like(learned), learned)


class SpatioTemporalResBlock(nn.Module):
    """VideoResBlock: spatial ResBlock, temporal ResBlock, learned blend of the two."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, eps: float):
        super().__init__()
        self.spatial_res_block = ResnetBlock2D(c_in, c_out, temb_dim, eps)
        self.temporal_res_block = TemporalResnetBlock(c_out, temb_dim, eps)
        self.time_mixer = AlphaBlender()

    def forward(self, x, ctx: "_Context"):
        x = self.spatial_res_block(x, ctx.emb_act)
        h = self.temporal_res_block(x, ctx.emb_act, ctx.num_frames)
        # blend(x, x + h): the temporal block's own residual folded into the blend.
        return layers.alpha_blend_residual(x, h, self.time_mixer.alpha(ctx.image_only_indicator))


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (to_q, to_k, to_v, to_out.0)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def project_out(self, x, residual=None):
        """to_out(x), added into `residual` when given."""
        return self.to_out[0](x) if residual is None else add_linear(residual, x, self.to_out[0])

    def single_token(self, context):
        """Cross-attention output when the context is one token.

        softmax over a single key is 1, so every query receives that token's value: the result is
        to_out(to_v(c)) whatever the query, and to_q/to_k/softmax are dead work (their weights
        stay for checkpoint compatibility).
        """
        return self.project_out(self.to_v(context))


# On a CPU, inference runs the feed-forward over at most this many bytes of its widest intermediate (the
# GEGLU projection) at a time. glibc serves buffers above its mmap threshold (at most 32 MiB) with fresh
# mappings, so a larger intermediate is zero-filled page by page on every call: at SVD's first level
# (7168 tokens x 2560 channels in bf16, 37 MB) that took 5-20 ms of the projection's ~6 ms GEMM.
FF_CHUNK_BYTES = 16 << 20


class FeedForward(nn.Module):
    """GEGLU feed-forward (diffusers names: net.0.proj, net.2)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4):
        super().__init__()
        inner = dim * mult
        proj = nn.Module()
        proj.proj = nn.Linear(dim, 2 * inner)
        self.net = nn.ModuleList([proj, nn.Identity(), nn.Linear(inner, dim_out or dim)])

    def forward(self, x, residual=None):
        """FF(x), added into `residual` when given."""
        rows = x.numel() // x.shape[-1]
        chunk = max(1, FF_CHUNK_BYTES // (self.net[0].proj.out_features * x.element_size()))
        if chunk >= rows or x.device.type != "cpu" or torch.is_grad_enabled():
            return self._forward(x, residual)
        # Equal token chunks of at most `chunk` rows: each row's output depends on that row alone (the
        # GEMMs may block, and so round, differently: measured within one bf16 ulp of the whole UNet output).
        pieces = -(-rows // chunk)
        xs = x.reshape(rows, -1).tensor_split(pieces)
        rs = [None] * pieces if residual is None else residual.reshape(rows, -1).tensor_split(pieces)
        return torch.cat([self._forward(a, r) for a, r in zip(xs, rs)]).reshape(*x.shape[:-1], -1)

    def _forward(self, x, residual):
        h = layers.geglu(self.net[0].proj(x))
        return self.net[2](h) if residual is None else add_linear(residual, h, self.net[2])


def cross_attention(attn: Attention, norm: nn.LayerNorm, x, context, group: int):
    """attn(norm(x), context) for x (N*group, L, C) and context (N, Lc, Dc): `group` consecutive
    rows of x (the frames of a clip) share one context row."""
    if context.shape[1] == 1:
        out = attn.single_token(context)  # (N, 1, C): no query needed
        return out.repeat_interleave(group, dim=0) if group > 1 else out
    n, lq, c = x.shape
    q = attn.to_q(norm(x)).reshape(n // group, group * lq, c)
    o = layers.spatial_attention(q, attn.to_k(context), attn.to_v(context), attn.heads)
    return attn.project_out(o.reshape(n, lq, c))


class BasicTransformerBlock(nn.Module):
    """Spatial block: self-attention over the tokens of a frame, cross-attention, GEGLU FF."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def attend(self, q, k, v, num_frames):
        return layers.spatial_attention(q, k, v, self.attn1.heads)

    def forward(self, x, context, num_frames):
        """context: (B, Lc, Dc), one per clip, shared by its frames."""
        h = self.norm1(x)
        a = self.attn1
        x = a.project_out(self.attend(a.to_q(h), a.to_k(h), a.to_v(h), num_frames), residual=x)
        x = x + cross_attention(self.attn2, self.norm2, x, context, group=num_frames)
        return self.ff(self.norm3(x), residual=x)


class TemporalBasicTransformerBlock(BasicTransformerBlock):
    """Temporal block: a GEGLU FF in front, then the same layers with attention over frames.

    Runs on frame-major tokens (B*T, S, C): LayerNorm and FF act per token, and attention over
    the frame axis goes through layers.temporal_attention, so no (B*S, T, C) copy is made. sgm
    gives it the first frame's context, which every frame of a clip shares.
    """

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__(dim, heads, context_dim)
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim)

    def attend(self, q, k, v, num_frames):
        return layers.temporal_attention(q, k, v, num_frames, self.attn1.heads)

    def forward(self, x, context, num_frames):
        return super().forward(self.ff_in(self.norm_in(x), residual=x), context, num_frames)


class TransformerSpatioTemporalModel(nn.Module):
    """SpatialVideoTransformer: spatial and temporal transformer blocks blended per layer."""

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1):
        super().__init__()
        self.norm = GroupNorm(channels, 1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, context_dim) for _ in range(depth)]
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            [TemporalBasicTransformerBlock(channels, heads, context_dim) for _ in range(depth)]
        )
        self.time_pos_embed = TimestepEmbedding(channels, 4 * channels, channels)
        self.time_mixer = AlphaBlender()
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, ctx: "_Context"):
        n, c, hgt, wid = x.shape
        t = ctx.num_frames
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, hgt * wid, c)  # a view when channels_last
        h = self.proj_in(tokens)
        # Frame-index positional embedding, the same for every clip: (T, C) -> (B*T, 1, C).
        frames = torch.arange(t, device=x.device)
        pos = self.time_pos_embed(timestep_embedding(frames, c).to(h.dtype))
        pos = pos.repeat(n // t, 1)[:, None]
        alpha = self.time_mixer.alpha(ctx.image_only_indicator)
        for spatial, temporal in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            h = spatial(h, ctx.context, t)
            h_mix = temporal(h + pos, ctx.context, t)
            h = layers.alpha_blend(h, h_mix, alpha)
        h = self.proj_out(h).reshape(n, hgt, wid, c).permute(0, 3, 1, 2)
        return h.add_(x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = layers.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = layers.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size):
        """Nearest-neighbour upsampling to `size` (the skip connection's size; 2x when even)."""
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class _Context:
    """What every block needs besides its input, computed once per forward."""

    def __init__(self, emb_act, context, num_frames, image_only_indicator):
        self.emb_act = emb_act
        self.context = context  # (B, Lc, Dc): per clip; the frames of a clip share it
        self.num_frames = num_frames
        self.image_only_indicator = image_only_indicator


class LevelBlock(nn.Module):
    """One resolution level: ResBlocks, each followed by a transformer when the level has attention."""

    def __init__(self, resnets: list, c_out, heads, context_dim, depth, attention):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attention:
            self.attentions = nn.ModuleList(
                [TransformerSpatioTemporalModel(c_out, heads, context_dim, depth) for _ in resnets]
            )
        self.has_attention = attention

    def layer(self, i: int, x, ctx):
        x = self.resnets[i](x, ctx)
        return self.attentions[i](x, ctx) if self.has_attention else x


class DownBlock(LevelBlock):
    def __init__(self, c_in, c_out, num_layers, temb_dim, eps, heads, context_dim, depth, attention, downsample):
        resnets = [SpatioTemporalResBlock(c_in if i == 0 else c_out, c_out, temb_dim, eps) for i in range(num_layers)]
        super().__init__(resnets, c_out, heads, context_dim, depth, attention)
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample(c_out)])
        self.has_downsample = downsample

    def steps(self) -> list:
        """The block as steps f(x, ctx, skips) -> x that each add one skip: its layers, then its downsampler."""
        layers = [functools.partial(self._layer_step, i) for i in range(len(self.resnets))]
        return layers + [self._downsample_step] if self.has_downsample else layers

    def _layer_step(self, i, x, ctx, skips):
        skips.append(self.layer(i, x, ctx))
        return skips[-1]

    def _downsample_step(self, x, ctx, skips):
        skips.append(self.downsamplers[0](x))
        return skips[-1]


class UpBlock(LevelBlock):
    def __init__(self, c_in, c_prev, c_out, num_layers, temb_dim, eps, heads, context_dim, depth, attention, upsample):
        resnets = []
        for i in range(num_layers):
            skip_channels = c_in if i == num_layers - 1 else c_out
            resnets.append(SpatioTemporalResBlock((c_prev if i == 0 else c_out) + skip_channels, c_out, temb_dim, eps))
        super().__init__(resnets, c_out, heads, context_dim, depth, attention)
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample(c_out)])
        self.has_upsample = upsample

    def steps(self) -> list:
        """The block as steps f(x, ctx, skips) -> x that each take one skip: its layers (the last
        one followed by the upsampler)."""
        return [functools.partial(self._layer_step, i) for i in range(len(self.resnets))]

    def _layer_step(self, i, x, ctx, skips):
        x = self.layer(i, torch.cat([x, skips.pop()], dim=1), ctx)
        if self.has_upsample and i == len(self.resnets) - 1:
            x = self.upsamplers[0](x, skips[-1].shape[-2:])
        return x


class MidBlock(nn.Module):
    def __init__(self, channels, temb_dim, eps, heads, context_dim, depth):
        super().__init__()
        self.resnets = nn.ModuleList([SpatioTemporalResBlock(channels, channels, temb_dim, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([TransformerSpatioTemporalModel(channels, heads, context_dim, depth)])

    def forward(self, x, ctx):
        x = self.resnets[0](x, ctx)
        x = self.attentions[0](x, ctx)
        return self.resnets[1](x, ctx)


class VideoUNet(nn.Module):
    """Image-to-video UNet. forward(sample (B,T,8,h,w), c_noise, context (B,L,D), added_time_ids (B,3))."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        cfg = config
        widths, temb = cfg.block_out_channels, cfg.time_embed_dim
        levels = len(widths)
        self.conv_in = layers.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], temb)
        self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)

        common = dict(temb_dim=temb, context_dim=cfg.cross_attention_dim, depth=cfg.transformer_layers_per_block)
        self.down_blocks = nn.ModuleList()
        for i in range(levels):
            self.down_blocks.append(
                DownBlock(
                    widths[max(i - 1, 0)], widths[i], cfg.layers_per_block, eps=cfg.resnet_eps("down", i),
                    heads=cfg.num_attention_heads[i], attention=cfg.attention_levels[i],
                    downsample=i < levels - 1, **common,
                )
            )
        self.mid_block = MidBlock(widths[-1], eps=cfg.resnet_eps("mid"), heads=cfg.num_attention_heads[-1], **common)
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(widths))
        for i in range(levels):
            level = levels - 1 - i
            self.up_blocks.append(
                UpBlock(
                    rev[min(i + 1, levels - 1)], rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1,
                    eps=cfg.resnet_eps("up", level), heads=cfg.num_attention_heads[level],
                    attention=cfg.attention_levels[level], upsample=i < levels - 1, **common,
                )
            )
        self.conv_norm_out = GroupNorm(widths[0], 1e-5)
        self.conv_out = layers.Conv2d(widths[0], cfg.out_channels, 3, padding=1)
        # SVD-FI's learned mask embedding z_m (UNetConfig.mask_embedding): one value per latent channel
        self.mask_embedding = nn.Parameter(torch.zeros(cfg.out_channels)) if cfg.mask_embedding else None
        self.feature_cache = None
        """svd_fast.accel.feature_cache: when set, the deep part's output may be reused (see forward)"""
        # SVD uses 32 groups everywhere. Narrow models need fewer: with one channel per group the
        # norm removes every channel's mean, and with it the colour of a frame. The group count
        # does not change any parameter shape, so it is set here rather than threaded through.
        for module in self.modules():
            if isinstance(module, GroupNorm):
                module.num_groups = cfg.norm_num_groups

    def embed(self, timesteps, added_time_ids, dtype):
        """Per-video embedding: time embedding of c_noise plus the micro-conditioning embedding."""
        cfg = self.config
        emb = self.time_embedding(timestep_embedding(timesteps, cfg.block_out_channels[0]).to(dtype))
        ids = timestep_embedding(added_time_ids, cfg.addition_time_embed_dim)
        ids = ids.reshape(added_time_ids.shape[0], -1).to(dtype)
        return emb + self.add_embedding(ids)

    def masked_conditioning(self, sample: torch.Tensor) -> torch.Tensor:
        """SVD-FI input (B, T, 2C+1, h, w) = [noisy | conditioning latents | mask]: where the mask is 0
        (a missing frame, or every frame of the unconditional branch) the learned mask embedding z_m
        is added to the conditioning latents. The paper's layout passes zeros there (the slot is z_m);
        a model with UNetConfig.prior_conditioning gets its prior's latent there (prior + z_m)."""
        lat = self.config.out_channels
        mask = sample[:, :, -1:]
        z_m = self.mask_embedding.to(sample.dtype).reshape(1, 1, -1, 1, 1)
        cond = sample[:, :, lat:-1] + (1 - mask) * z_m
        return torch.cat([sample[:, :, :lat], cond, mask], dim=2)

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, image_only_indicator=None):
        b, t, c, hgt, wid = sample.shape
        if c != self.config.in_channels:
            raise ValueError(f"VideoUNet expects {self.config.in_channels} input channels, got sample {tuple(sample.shape)}")
        if encoder_hidden_states.shape[0] != b or added_time_ids.shape[0] != b:
            raise ValueError(
                f"batch mismatch: sample {b}, encoder_hidden_states {encoder_hidden_states.shape[0]}, "
                f"added_time_ids {added_time_ids.shape[0]}"
            )
        if self.mask_embedding is not None:
            sample = self.masked_conditioning(sample)
        dtype = sample.dtype
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        emb = self.embed(timesteps, added_time_ids, dtype)
        if image_only_indicator is None:
            image_only_indicator = torch.zeros(b, t, device=sample.device)
        ctx = _Context(
            emb_act=F.silu(emb).repeat_interleave(t, dim=0),  # every ResBlock applies SiLU first
            context=encoder_hidden_states,
            num_frames=t,
            image_only_indicator=image_only_indicator,
        )
        x = sample.reshape(b * t, c, hgt, wid).contiguous(memory_format=torch.channels_last)
        x = self.conv_in(x)
        skips = [x]
        # The down path's steps each add a skip, the up path's each take one (len(up) = len(down) + 1).
        # A feature cache (DeepCache, arXiv 2312.00858) splits them: the first `depth` down steps
        # and the up steps that take their skips are shallow and always run; the deep part between
        # them runs only when the cache has no output of it to give back for this input signature.
        down = [step for block in self.down_blocks for step in block.steps()]
        up = [step for block in self.up_blocks for step in block.steps()]
        cache = self.feature_cache
        depth = len(down) if cache is None else cache.depth
        for step in down[:depth]:
            x = step(x, ctx, skips)
        key = (tuple(sample.shape), sample.dtype, sample.device)
        deep = None if cache is None else cache.reuse(key)
        if deep is None:
            for step in down[depth:]:
                x = step(x, ctx, skips)
            x = self.mid_block(x, ctx)
            for step in up[: len(up) - depth - 1]:
                x = step(x, ctx, skips)
            if cache is not None:
                cache.store(key, x)
        else:
            x = deep
        for step in up[len(up) - depth - 1 :]:
            x = step(x, ctx, skips)
        x = self.conv_out(self.conv_norm_out(x, silu=True))
        return x.reshape(b, t, -1, hgt, wid)
