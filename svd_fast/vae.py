"""The temporal VAE of Stable Video Diffusion: SD KL-f8 encoder + temporal ("deflickering") decoder.

Parameter names and shapes are identical to diffusers' AutoencoderKLTemporalDecoder, so a
diffusers `vae/` folder loads as is; the sgm names are a key mapping (svd_fast.checkpoints.sgm).

- Encoder: the plain per-frame SD encoder (GroupNorm eps 1e-6, downsampling pads right/bottom by
  one and applies a stride-2 conv) followed by the 1x1 `quant_conv`. It outputs the mean and
  log-variance of the latent; image conditioning uses the mean, unscaled.
- Decoder: every ResBlock is a spatial ResBlock followed by a temporal ResBlock ((3,1,1) convs,
  GroupNorm eps 1e-5 with statistics pooled over the frames of a clip), blended with a learned
  factor; a final (3,1,1) conv (`time_conv_out`) mixes neighbouring frames of the RGB output.

Activations are frame-major, (B*T, C, H, W) in channels_last memory, as in the UNet.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svd_fast import layers
from svd_fast.config import VAEConfig
from svd_fast.unet import GroupNorm

SPATIAL_EPS = 1e-6  # SD's Normalize() in encoder and decoder
TEMPORAL_EPS = 1e-5  # sgm's normalization() inside the decoder's temporal ResBlocks
LOGVAR_RANGE = (-30.0, 20.0)  # clamp of sgm / diffusers DiagonalGaussianDistribution


# Inference runs the per-frame (spatial) layers of the VAE a few frames at a time, so their
# intermediates (GroupNorm output, conv outputs, the 4x upsampled map) exist for one chunk instead
# of the whole clip: the decoder's peak memory becomes about its largest whole-clip activation
# plus one chunk's work. Exact: every op in those layers is computed per frame.
FRAME_CHUNK_BYTES = 32 << 20
"""input bytes per chunk of frames for the per-frame layers (at least one frame per chunk)"""


def per_frame_chunks(fn, x: torch.Tensor, growth: int = 1) -> torch.Tensor:
    """fn(x) for an fn that treats each of x's frames (dim 0) alone, applied chunk by chunk under
    no_grad/inference (with autograd on, fn(x) itself, as training needs the intermediates anyway).
    growth: how many times larger than its input fn's intermediates get (4 for a x2 upsampling)."""
    chunk = max(1, FRAME_CHUNK_BYTES // max(1, growth * x[0].numel() * x.element_size()))
    if torch.is_grad_enabled() or chunk >= x.shape[0]:
        return fn(x)
    first = fn(x[:chunk])
    layout = torch.channels_last if first.ndim == 4 and first.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    out = torch.empty((x.shape[0], *first.shape[1:]), dtype=first.dtype, device=first.device, memory_format=layout)
    out[:chunk] = first
    del first
    for start in range(chunk, x.shape[0], chunk):
        out[start : start + chunk] = fn(x[start : start + chunk])
    return out


class ResnetBlock(nn.Module):
    """Spatial ResBlock without time embedding: GN-SiLU-conv3x3, GN-SiLU-conv3x3, residual."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(c_in, SPATIAL_EPS, groups)
        self.conv1 = layers.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = GroupNorm(c_out, SPATIAL_EPS, groups)
        self.conv2 = layers.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = layers.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, num_frames=None):
        """num_frames is accepted (and unused) so every VAE block has the same call signature."""
        return per_frame_chunks(self._forward, x)

    def _forward(self, x):
        h = self.conv2(self.norm2(self.conv1(self.norm1(x, silu=True)), silu=True))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class TemporalResnetBlock(nn.Module):
    """Temporal ResBlock of the decoder (sgm ResBlock(dims=3, skip_t_emb=True)).

    forward returns only the residual branch; VideoResnetBlock folds the residual into the blend.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(channels, TEMPORAL_EPS, groups)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.norm2 = GroupNorm(channels, TEMPORAL_EPS, groups)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x, num_frames):
        h = self.norm1(x, silu=True, num_frames=num_frames)
        h = layers.temporal_conv(h, self.conv1.weight, self.conv1.bias, num_frames)
        h = self.norm2(h, silu=True, num_frames=num_frames)
        return layers.temporal_conv(h, self.conv2.weight, self.conv2.bias, num_frames)


class TimeMixer(nn.Module):
    """The decoder's learned blend ('learned' strategy, image_only_indicator ignored).

    The VAE uses the opposite convention from the UNet: out = a * x_temporal + (1 - a) * x_spatial
    with a = sigmoid(mix_factor) (diffusers: AlphaBlender(switch_spatial_to_temporal_mix=True)).
    """

    def __init__(self):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.zeros(1))

    def spatial_weight(self, n: int) -> torch.Tensor:
        """Weight of the spatial path for each of n frames, (n,) in fp32."""
        return (1 - torch.sigmoid(self.mix_factor.float())).expand(n)


class VideoResnetBlock(nn.Module):
    """Decoder ResBlock: spatial ResBlock, temporal ResBlock, learned blend of the two."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.spatial_res_block = ResnetBlock(c_in, c_out, groups)
        self.temporal_res_block = TemporalResnetBlock(c_out, groups)
        self.time_mixer = TimeMixer()

    def forward(self, x, num_frames):
        return self.temporal(self.spatial_res_block(x), num_frames)

    def temporal(self, x, num_frames):
        """The temporal half on the spatial half's output x."""
        h = self.temporal_res_block(x, num_frames)
        # blend(x_spatial=x, x_temporal=x + h) = x + a * h
        return layers.alpha_blend_residual(x, h, self.time_mixer.spatial_weight(x.shape[0]))


class MidAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (SD AttnBlock, diffusers names)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(channels, SPATIAL_EPS, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        n, c, h, w = x.shape
        # (N, C, H, W) channels_last -> (N, H*W, C) is a view, not a copy
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)
        out = layers.spatial_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens), heads=1)
        out = self.to_out[0](out).transpose(1, 2).reshape(n, c, h, w)
        return x + out


class MidBlock(nn.Module):
    """ResBlock, then (attention, ResBlock) pairs: diffusers applies attentions[i] before resnets[i+1].

    The encoder has two ResBlocks; the decoder has `layers_per_block` (2 for SVD). With a single
    decoder ResBlock diffusers keeps the attention's weights but never applies it; so do we.
    """

    def __init__(self, resnets: list[nn.Module], channels: int, groups: int):
        super().__init__()
        self.attentions = nn.ModuleList([MidAttention(channels, groups)])
        self.resnets = nn.ModuleList(resnets)

    def forward(self, x, num_frames=None):
        x = self.resnets[0](x, num_frames)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x), num_frames)
        return x


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 stride-2 conv without padding (SD encoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = layers.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = layers.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return per_frame_chunks(lambda frames: self.conv(F.interpolate(frames, scale_factor=2.0, mode="nearest")), x,
                                growth=4)


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(num_layers))
        self.downsamplers = nn.ModuleList([Downsample(c_out)]) if downsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            VideoResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(c_out)]) if upsample else None

    def stages(self) -> list:
        """The block as a sequence of steps x -> stage(x, num_frames). A caller that loops over them
        holds only the current step's input, so each step's input is freed as soon as it is used:
        the spatial half of a ResBlock (which changes the width) frees its input before the
        temporal half runs."""
        steps = []
        for resnet in self.resnets:
            steps += [lambda x, num_frames, r=resnet: r.spatial_res_block(x), resnet.temporal]
        if self.upsamplers is not None:
            steps.append(lambda x, num_frames: self.upsamplers[0](x))
        return steps

    def forward(self, x, num_frames):
        for stage in self.stages():
            x = stage(x, num_frames)
        return x


class Encoder(nn.Module):
    """SD KL-f8 encoder: image (N, 3, H, W) -> moments (N, 2*latent, H/8, W/8) before quant_conv."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = layers.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(widths[max(i - 1, 0)], w, config.layers_per_block, groups, downsample=i < len(widths) - 1)
            for i, w in enumerate(widths)
        )
        resnets = [ResnetBlock(widths[-1], widths[-1], groups) for _ in range(2)]
        self.mid_block = MidBlock(resnets, widths[-1], groups)
        self.conv_norm_out = GroupNorm(widths[-1], SPATIAL_EPS, groups)
        self.conv_out = layers.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_norm_out(x, silu=True))


class TemporalDecoder(nn.Module):
    """Latents (B*T, latent, h, w) of clips of num_frames frames -> RGB (B*T, 3, 8h, 8w)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths, groups = list(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = layers.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        resnets = [VideoResnetBlock(widths[0], widths[0], groups) for _ in range(config.layers_per_block)]
        self.mid_block = MidBlock(resnets, widths[0], groups)
        self.up_blocks = nn.ModuleList(
            UpBlock(widths[max(i - 1, 0)], w, config.layers_per_block + 1, groups, upsample=i < len(widths) - 1)
            for i, w in enumerate(widths)
        )
        self.conv_norm_out = GroupNorm(widths[-1], SPATIAL_EPS, groups)
        self.conv_out = layers.Conv2d(widths[-1], config.out_channels, 3, padding=1)
        self.time_conv_out = nn.Conv3d(config.out_channels, config.out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, z, num_frames: int):
        x = self.mid_block(self.conv_in(z), num_frames)
        for stage in [stage for block in self.up_blocks for stage in block.stages()]:  # flat: see UpBlock.stages
            x = stage(x, num_frames)
        x = per_frame_chunks(lambda frames: self.conv_out(self.conv_norm_out(frames, silu=True)), x)
        return layers.temporal_conv(x, self.time_conv_out.weight, self.time_conv_out.bias, num_frames)


class TemporalVAE(nn.Module):
    """SVD's VAE (diffusers AutoencoderKLTemporalDecoder parameter names).

    Dtypes: the VAE computes in its parameter dtype, except that fp16 weights with
    `config.force_upcast` run on an fp32 copy of the weights (fp16 overflows in the decoder; sgm
    decodes without autocast). Outputs come back in that compute dtype; `decode_latents` returns
    fp32 like diffusers.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = TemporalDecoder(config)
        self.quant_conv = layers.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.compiled_decoder = None  # set by svd_fast.accel.compile (not a submodule: same state dict)

    @property
    def compute_dtype(self) -> torch.dtype:
        dtype = self.quant_conv.weight.dtype
        return torch.float32 if dtype == torch.float16 and self.config.force_upcast else dtype

    def _runner(self, module: nn.Module):
        """module itself, or a call of it on fp32 copies of its weights when upcasting."""
        if self.compute_dtype == self.quant_conv.weight.dtype:
            return module
        params = {name: p.float() for name, p in module.named_parameters()}
        return lambda *args: torch.func.functional_call(module, params, args)

    def _check_image(self, x: torch.Tensor, name: str):
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"{name}: expected (N, {self.config.in_channels}, H, W) images, got {tuple(x.shape)}")

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-variance of the latent distribution of images x in [-1, 1].

        x: (N, 3, H, W). Returns two (N, latent, H/8, W/8) tensors, unscaled (no scaling_factor).
        """
        self._check_image(x, "encode")
        x = x.to(self.compute_dtype).contiguous(memory_format=torch.channels_last)
        moments = self._runner(self.encoder)(x)
        moments = self._runner(self.quant_conv)(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The distribution's mode (= mean), unscaled: diffusers `vae.encode(x).latent_dist.mode()`.

        This is the conditioning latent of SVD (never multiplied by scaling_factor).
        """
        return self.encode_moments(x)[0]

    @staticmethod
    def sample_latent(mean, logvar, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw mean + exp(logvar / 2) * N(0, I) (training latents, before scaling)."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: torch.Tensor, num_frames: int, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Decode UNSCALED latents z (B*T, latent, h, w) -> frames (B*T, 3, 8h, 8w) in about [-1, 1].

        Frames are decoded `decode_chunk_size` at a time (default: num_frames, i.e. one clip at a
        time), each chunk as a clip of its own length: temporal convs and norms see only frames
        inside the chunk. Like diffusers' `decode_latents` and sgm's `decode_first_stage`, chunks
        run over the flattened (B*T) frames, so a chunk size that does not divide T mixes the end of
        one clip with the start of the next; keep it a divisor of T to avoid that.
        """
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"decode: expected (B*T, {self.config.latent_channels}, h, w) latents, got {tuple(z.shape)}")
        if num_frames < 1 or z.shape[0] % num_frames:
            raise ValueError(f"decode: {z.shape[0]} latent frames are not a whole number of {num_frames}-frame clips")
        chunk = num_frames if decode_chunk_size is None else decode_chunk_size
        if chunk < 1:
            raise ValueError(f"decode: decode_chunk_size must be >= 1, got {decode_chunk_size}")
        decoder = self.compiled_decoder or self._runner(self.decoder)
        z = z.to(self.compute_dtype).contiguous(memory_format=torch.channels_last)
        n = z.shape[0]
        return torch.cat([decoder(z[i : i + chunk], min(chunk, n - i)) for i in range(0, n, chunk)])

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """diffusers' StableVideoDiffusionPipeline.decode_latents: SCALED latents (B, T, C, h, w)
        (as the sampler produces them) -> fp32 video (B, 3, T, 8h, 8w) in about [-1, 1]."""
        if latents.ndim != 5:
            raise ValueError(f"decode_latents: expected (B, T, C, h, w) latents, got {tuple(latents.shape)}")
        b, t = latents.shape[:2]
        z = latents.flatten(0, 1) * (1 / self.config.scaling_factor)
        frames = self.decode(z, t, decode_chunk_size)
        return frames.reshape(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()
