"""int8 inference of the UNet on x86 CPUs: int8 weights, activations quantized to int8 at run time.

`quantize_unet(unet)` changes a VideoUNet in place and returns what `dequantize_unet` needs to
give the float layers back (the original weight tensors are kept, so restoring is exact).

Quantized:
- nn.Linear of the transformers (proj_in/proj_out, self-attention q/k/v/out, the GEGLU
  feed-forwards) through torchao's Int8DynamicActivationInt8WeightConfig: weights int8 symmetric
  per output channel, activations int8 symmetric per token, scales computed on every call; the
  GEMM is int8 x int8 -> int32 (oneDNN, VNNI/AMX-INT8), rescaled to the model's dtype.
- The convolutions of the ResBlocks (3x3, the 1x1 shortcuts, the (3,1,1) temporal convs) and of
  the down/upsamplers. torchao's int8 tensor implements linear only (0.18), so these call
  PyTorch's oneDNN int8 convolution (torch.ops.onednn.qconv_pointwise, the kernel PyTorch's
  X86InductorQuantizer flow lowers convs to) with int8 weights per output channel and the input
  quantized at run time to uint8 per tensor (asymmetric: most conv inputs follow a SiLU). A conv
  window mixes pixels, so a scale per pixel (token) cannot be factored out of the sum.

Kept in float (the model's dtype): the first and last conv (conv_in: 8 input channels; conv_out:
4 output channels, straight into the denoiser's output), the time, micro-conditioning and
frame-position embeddings and every ResBlock's time_emb_proj (a few rows per call: nothing to
gain, error added to every feature map), the cross-attention attn2 (SVD's context is one CLIP
token, so it runs on B rows), GroupNorm, LayerNorm, attention and its softmax, the alpha blends,
and any layer narrower than MIN_WIDTH channels.

Speed needs torch.compile (svd_fast.accelerate(pipe, quantize="int8", compile=True)): inductor
fuses the per-token quantization and the rescaling around the int8 GEMMs; eager pays separate
passes for each. The CPU's int8 instructions are detected (`int8_support`); without VNNI or
AMX-INT8 activations use 7 bits (reduce_range) to stay exact in the u8 x s8 instructions,
and int8 is not expected to be faster there.

On CUDA only the linears are quantized (the convs stay in the model's dtype: torchao's quantized
tensors implement linear only, and PyTorch has no int8 or fp8 convolution kernel on CUDA):
- 'int8': the same torchao config (int8 x int8 -> int32 through torch._int_mm);
- 'fp8': torchao's Float8DynamicActivationFloat8WeightConfig, e4m3 weights and activations scaled per
  row (bf16 models; per tensor for fp16/fp32, which torchao's row-wise kernel does not take), on GPUs
  of compute capability 8.9 or newer (Ada, Hopper), whose tensor cores compute in fp8. Layers whose
  widths are not multiples of 16 (torch._scaled_mm's requirement) stay float.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

MODES = ("int8", "fp8")
FP8_CAPABILITY = (8, 9)
"""the first CUDA compute capability with fp8 tensor cores (Ada); Hopper is 9.0"""
MIN_WIDTH = 64
"""layers with fewer input or output channels stay float: too little work for int8 to pay"""

FLOAT_LAYERS = ("conv_in", "conv_out", "time_embedding", "add_embedding", "time_pos_embed", "time_emb_proj", "attn2")
"""name parts of the layers that stay float (see the module docstring for why)"""


def check_mode(mode) -> str:
    """The quantization mode, or a ValueError naming the valid ones."""
    if mode not in MODES:
        raise ValueError(f"quantize must be one of {', '.join(repr(m) for m in MODES)} (or None), got {mode!r}")
    return mode


def int8_support(flags=None) -> dict:
    """What this CPU offers for int8: {'instructions': [...], 'reduce_range': bool}.

    VNNI (vpdpbusd) and AMX-INT8 multiply u8 x s8 into int32 exactly; without them oneDNN falls
    back to vpmaddubsw, whose int16 sums saturate unless activations keep to 7 bits.
    """
    from svd_fast.accel.dtypes import cpu_flags

    flags = cpu_flags() if flags is None else flags
    found = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags]
    return {"instructions": found, "reduce_range": not found}


@dataclass
class QuantizedUNet:
    """What quantize_unet changed, to undo it: the original weights and modules."""

    linears: dict = field(default_factory=dict)  # nn.Linear -> its float weight Parameter
    modules: list = field(default_factory=list)  # (parent, attribute name, original module)

    @property
    def num_layers(self) -> int:
        return len(self.linears) + len(self.modules)


def quantize_unet(unet: nn.Module, mode: str = "int8") -> QuantizedUNet:
    """Quantize `unet` (an svd_fast VideoUNet on an x86 CPU or a CUDA GPU) in place; see the module
    docstring."""
    check_mode(mode)
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    from svd_fast.adapters import adapted_layers, is_fused

    if adapted_layers(unet) and not is_fused(unet):  # a quantized layer holds one fixed weight
        raise ValueError(f"{mode} quantization: the UNet carries LoRA adapters that are not fused; call "
                         "pipe.fuse_lora() first")
    if importlib.util.find_spec("torchao") is None:
        raise ValueError(f"{mode} quantization needs the torchao package: pip install 'svd_fast[int8]' (or torchao)")
    if device.type == "cuda":
        config = cuda_linear_config(mode, dtype, torch.cuda.get_device_capability(device))
        return quantize_linears(unet, config, multiple_of=16 if mode == "fp8" else 1)
    if mode == "fp8":
        raise ValueError(f"fp8 quantization needs a CUDA GPU of compute capability {_capability(FP8_CAPABILITY)} or "
                         f"newer (Ada, Hopper); the UNet is on {device}: use quantize='int8' on CPUs")
    if device.type != "cpu":
        raise ValueError(f"int8 quantization runs on x86 CPUs and CUDA GPUs; the UNet is on {device}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"int8 quantization takes an fp32 or bf16 UNet, not {dtype} (pass --dtype fp32 or bf16)")
    if not torch.backends.mkldnn.is_available():
        raise ValueError("int8 quantization needs PyTorch built with oneDNN (mkldnn), which this build lacks")
    support = int8_support()
    if support["reduce_range"]:
        warnings.warn("this CPU has neither VNNI nor AMX-INT8: int8 runs with 7-bit activations and is not "
                      "expected to be faster than bf16/fp32 here", stacklevel=2)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    from svd_fast.unet import TemporalResnetBlock

    undo = QuantizedUNet()
    qmax = 127 if support["reduce_range"] else 255
    for module, child_name, child in _chosen_children(unet):
        if isinstance(child, TemporalResnetBlock) and _wide(child.conv1):
            replacement = Int8TemporalResnetBlock(child, qmax)
        elif isinstance(child, nn.Conv2d) and _wide(child):
            replacement = Int8Conv2d(child, qmax)
        else:
            continue
        setattr(module, child_name, replacement)
        undo.modules.append((module, child_name, child))
    config = Int8DynamicActivationInt8WeightConfig(reduce_range=support["reduce_range"])
    _quantize_linears(quantizable_linears(unet), config, undo)
    return undo


def cuda_linear_config(mode: str, dtype: torch.dtype, capability: tuple[int, int]):
    """torchao's config for the linears of a `dtype` UNet on a CUDA GPU of compute `capability`."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8DynamicActivationInt8WeightConfig

    check_mode(mode)
    if mode == "int8":
        return Int8DynamicActivationInt8WeightConfig()
    if tuple(capability) < FP8_CAPABILITY:
        raise ValueError(f"fp8 quantization needs a GPU of compute capability {_capability(FP8_CAPABILITY)} or newer "
                         f"(Ada, Hopper); this one is {_capability(capability)}: use quantize='int8'")
    from torchao.quantization import PerRow, PerTensor

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if dtype == torch.bfloat16 else PerTensor())


def quantize_linears(unet: nn.Module, config, multiple_of: int = 1) -> QuantizedUNet:
    """Quantize only the linears (quantizable_linears) with a torchao `config`, in place: the CUDA
    plan (it runs on any device torchao's config supports)."""
    undo = QuantizedUNet()
    _quantize_linears(quantizable_linears(unet, multiple_of), config, undo)
    return undo


def quantizable_linears(unet: nn.Module, multiple_of: int = 1) -> list[nn.Linear]:
    """The nn.Linear layers quantize_unet quantizes: wide, outside FLOAT_LAYERS, and (fp8) with
    both widths multiples of `multiple_of`."""
    return [child for _, _, child in _chosen_children(unet) if isinstance(child, nn.Linear) and _wide(child)
            and child.in_features % multiple_of == 0 and child.out_features % multiple_of == 0]


def _chosen_children(unet: nn.Module):
    """(parent, attribute name, module) of every direct child outside FLOAT_LAYERS, parents first."""
    for name, module in list(unet.named_modules()):
        if _stays_float(name):
            continue
        for child_name, child in list(module.named_children()):
            if not _stays_float(f"{name}.{child_name}" if name else child_name):
                yield module, child_name, child


def _capability(capability) -> str:
    return ".".join(str(part) for part in capability)


def dequantize_unet(undo: QuantizedUNet) -> None:
    """Put back every float module and weight that quantize_unet replaced (the same tensors)."""
    for parent, name, original in reversed(undo.modules):
        setattr(parent, name, original)
    for linear, weight in undo.linears.items():
        linear.weight = weight
        linear.__dict__.pop("extra_repr", None)  # torchao's per-instance repr
    undo.modules.clear()
    undo.linears.clear()


def is_quantized(module: nn.Module) -> bool:
    """True for a layer that computes in int8 or fp8 (an Int8 module here, or a torchao linear)."""
    if isinstance(module, (Int8Conv2d, Int8TemporalConv)):
        return True
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and weight is not None and getattr(weight, "qdata", None) is not None \
        and weight.qdata.dtype in (torch.int8, torch.float8_e4m3fn)


def _stays_float(name: str) -> bool:
    return any(part in FLOAT_LAYERS for part in name.split("."))


def _wide(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features) >= MIN_WIDTH
    return min(layer.in_channels, layer.out_channels) >= MIN_WIDTH


def _quantize_linears(linears: list, config, undo: QuantizedUNet) -> None:
    from torchao.quantization import quantize_

    for linear in linears:
        undo.linears[linear] = linear.weight
        quantize_(linear, config)  # applies to the root module itself: one chosen layer at a time


# ------------------------------------------------------------------------------- int8 convs
def quantize_input(x: torch.Tensor, qmax: int):
    """x as uint8 with one scale and zero point for the whole tensor (asymmetric, covers 0)."""
    lo, hi = torch.aminmax(x.detach())
    lo, hi = lo.float().clamp(max=0), hi.float().clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero_point = torch.round(-lo / scale).to(torch.int32)
    q = torch.clamp(torch.round(x.float() / scale) + zero_point, 0, qmax).to(torch.uint8)
    return q, scale, zero_point


def _int8_weight(weight: torch.Tensor):
    """Symmetric int8 weights with one fp32 scale per output channel."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=tuple(range(1, w.ndim))) / 127).clamp(min=1e-12)
    shape = (-1,) + (1,) * (w.ndim - 1)
    return torch.clamp(torch.round(w / scale.reshape(shape)), -127, 127).to(torch.int8), scale


class _Int8ConvBase(nn.Module):
    """A 2-D conv in oneDNN int8: weights packed once, input quantized on every call."""

    def _pack(self, weight4d, bias, stride, padding, dilation, groups, qmax):
        qweight, scale = _int8_weight(weight4d)
        self.stride, self.padding, self.dilation, self.groups = list(stride), list(padding), list(dilation), groups
        self.qmax = qmax
        self.register_buffer("w_scale", scale, persistent=False)
        self.register_buffer("w_zero_point", torch.zeros(len(scale), dtype=torch.int64), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float(), persistent=False)
        self.register_buffer("qweight", torch.ops.onednn.qconv_prepack(
            qweight, scale, 1.0, 0, self.stride, self.padding, self.dilation, groups, None), persistent=False)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in channels_last; returns the conv in x's dtype, channels_last."""
        q, scale, zero_point = quantize_input(x, self.qmax)
        return torch.ops.onednn.qconv_pointwise.tensor(
            q, scale, zero_point, self.qweight, self.w_scale, self.w_zero_point, self.bias, self.stride, self.padding,
            self.dilation, self.groups, 1.0, 0, x.dtype, "none", [], "")


class Int8Conv2d(_Int8ConvBase):
    """int8 stand-in for an nn.Conv2d (zero padding)."""

    def __init__(self, conv: nn.Conv2d, qmax: int = 255):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"Int8Conv2d supports explicit zero padding, not {conv.padding_mode}/{conv.padding}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self._pack(conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, qmax)

    def forward(self, x):
        return self.conv(x.contiguous(memory_format=torch.channels_last))

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, int8, stride={tuple(self.stride)}, padding={tuple(self.padding)}"


class Int8TemporalConv(_Int8ConvBase):
    """int8 (K,1,1) conv over the frames of each clip, zero-padded in time (layers.temporal_conv).

    Frame-major (B*T, C, H, W) channels_last memory is (B, T, H*W, C): the same bytes as a
    (B, C, T, H*W) channels_last image, on which this is a (K, 1) 2-D conv. The time padding is
    written here (one copy of the input, with K // 2 zero frames at each end; zeros quantize
    exactly to the zero point) and the conv runs unpadded: oneDNN's AMX-INT8 kernels (torch 2.13)
    pad some of these convs wrongly, e.g. 64 channels over 12x12 frames: 26.8% error against 0.9%
    pre-padded or on AVX512-VNNI (measured 2026-12-02, Intel Xeon family 6 model 167).
    """

    def __init__(self, conv: nn.Conv3d, qmax: int = 255):
        super().__init__()
        self.time_padding = conv.kernel_size[0] // 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self._pack(conv.weight[..., 0], conv.bias, (1, 1), (0, 0), (1, 1), 1, qmax)

    def forward(self, x, num_frames: int):
        n, c, h, w = x.shape
        frames = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        frames = frames.reshape(n // num_frames, num_frames, h * w, c)
        p = self.time_padding
        clips = frames.new_empty(n // num_frames, num_frames + 2 * p, h * w, c)
        clips[:, :p] = 0  # only the padding frames are zeroed: the rest is written once, below
        clips[:, p + num_frames:] = 0
        clips[:, p:p + num_frames] = frames
        out = self.conv(clips.permute(0, 3, 1, 2))  # (B, C_out, T, H*W)
        out = out.permute(0, 2, 3, 1).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        return out

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, int8, temporal"


class Int8TemporalResnetBlock(nn.Module):
    """unet.TemporalResnetBlock with its two (3,1,1) convs in int8; the norms and the time
    embedding projection are the original (float) modules."""

    def __init__(self, block, qmax: int = 255):
        super().__init__()
        self.norm1, self.time_emb_proj, self.norm2 = block.norm1, block.time_emb_proj, block.norm2
        self.conv1, self.conv2 = Int8TemporalConv(block.conv1, qmax), Int8TemporalConv(block.conv2, qmax)

    def forward(self, x, emb_act, num_frames):
        h = self.conv1(self.norm1(x, silu=True, num_frames=num_frames), num_frames)
        h = h.add_(self.time_emb_proj(emb_act)[:, :, None, None])
        return self.conv2(self.norm2(h, silu=True, num_frames=num_frames), num_frames)


__all__ = ["MODES", "FP8_CAPABILITY", "FLOAT_LAYERS", "MIN_WIDTH", "check_mode", "int8_support", "quantize_unet",
           "dequantize_unet", "cuda_linear_config", "quantize_linears", "quantizable_linears", "is_quantized", "QuantizedUNet", "Int8Conv2d", "Int8TemporalConv", "Int8TemporalResnetBlock"]
