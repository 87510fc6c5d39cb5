"""Camera control by the start of sampling (training-free, any image-to-video model).

Every frame k starts from the input image moved by k steps of a camera move (zoom about the centre,
pan), encoded by the VAE and noised to a moderate sigma; frame 0 is the image itself. At that noise
level the picture's layout survives, so the denoiser keeps the move and redraws the detail: the
approach of CamTrol (Hou et al. 2024, "Training-free Camera Control for Video Generation"), which
starts SVD from noised renders of the moved scene. Here the scene is the image plane (no depth), so
a zoom magnifies and a pan shifts the whole picture; content entering at the borders starts as the
border's pixels repeated and is left to the denoiser.

Why: the default model's UNet does not learn a zoom from the loss (training/recipes/camera_lora.py's
docstring: LoRAs and full fine-tunes on zoom clips moved the held-out divergence by at most +0.004),
while this start gives it the zoom's layout directly.

    python -m svd_fast.sample --image IMG.png --camera zoom_in [--camera pan_left:0.02] --out OUT.gif
    pipe(image, camera="zoom_in:1.05")            # or a CameraMove

Or from pure noise that moves with the camera (warped_noise, `camera_from="noise"`), the only way for
text-to-video models, whose pipeline by default takes the move from the prompt's camera words
(move_from_text).

Moves: `zoom_in[:Z]` / `zoom_out[:Z]` (magnification per frame, Z > 1, default DEFAULT_ZOOM),
`pan_left|pan_right|pan_up|pan_down[:P]` (the camera turns that way, so the picture moves the other
way by P of the frame's width or height per frame, default DEFAULT_PAN). Several compose: the zooms
multiply, the pans add.
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch
import torch.nn.functional as F

DEFAULT_ZOOM = 1.05
"""magnification per frame: the middle of the zoom training clips' range (camera_lora.ZOOM, 1.03-1.07)"""
DEFAULT_PAN = 0.025
"""picture displacement per frame as a fraction of the frame (1.6 px at 64 px; the pan clips move 1-2.5 px)"""
START_SIGMA = 3.0
"""sigma the moved frames are noised to when the call gives no image_init_sigma. Chosen on the default
model's 4 held-out photos x 3 seeds (zoom_in 1.05, 8 steps, frame 0 held, 2026-12-04): divergence sign
right in 11 of 12 videos from sigma 3 against 9 of 12 from sigma 10 (mean divergence +0.038 / +0.007)"""
PAN_DIRECTIONS = {"pan_left": (1, 0), "pan_right": (-1, 0), "pan_up": (0, 1), "pan_down": (0, -1)}
"""the picture's motion (x right, y down) when the camera pans that way (svd_fast.train.camera_motion.PAN_FLOW)"""


@dataclasses.dataclass(frozen=True)
class CameraMove:
    """A constant camera move per frame: `zoom` (picture magnification, > 0; 1 = none) and the
    picture's displacement `pan_x`, `pan_y` as fractions of the frame's width and height (x right,
    y down)."""

    zoom: float = 1.0
    pan_x: float = 0.0
    pan_y: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.zoom) and self.zoom > 0):
            raise ValueError(f"camera zoom must be a positive number, got {self.zoom}")
        if not (math.isfinite(self.pan_x) and math.isfinite(self.pan_y)):
            raise ValueError(f"camera pan must be finite, got ({self.pan_x}, {self.pan_y})")

    def then(self, other: "CameraMove") -> "CameraMove":
        """Both moves at once: zooms multiply, pans add."""
        return CameraMove(self.zoom * other.zoom, self.pan_x + other.pan_x, self.pan_y + other.pan_y)


def parse_move(spec: str) -> CameraMove:
    """'zoom_in', 'zoom_out:1.03', 'pan_left:0.02', ... (module docstring) as a CameraMove."""
    name, _, speed_text = spec.partition(":")
    moves = ("zoom_in", "zoom_out", *PAN_DIRECTIONS)
    if name not in moves:
        raise ValueError(f"camera move must be one of {', '.join(moves)} (optionally ':SPEED'), got {spec!r}")
    try:
        speed = float(speed_text) if speed_text else (DEFAULT_ZOOM if name.startswith("zoom") else DEFAULT_PAN)
    except ValueError:
        raise ValueError(f"camera move {spec!r}: the speed after ':' must be a number") from None
    if name.startswith("zoom"):
        if not (math.isfinite(speed) and speed > 1):
            raise ValueError(f"camera move {spec!r}: the zoom per frame must be > 1 (zoom_out inverts it)")
        return CameraMove(zoom=speed if name == "zoom_in" else 1 / speed)
    if not (math.isfinite(speed) and 0 < speed < 1):
        raise ValueError(f"camera move {spec!r}: the pan per frame is a fraction of the frame, in (0, 1)")
    dx, dy = PAN_DIRECTIONS[name]
    return CameraMove(pan_x=dx * speed, pan_y=dy * speed)


CAMERA_WORDS = {"camera pans left": "pan_left", "camera pans right": "pan_right", "camera tilts up": "pan_up",
                "camera tilts down": "pan_down", "camera zooms in": "zoom_in", "camera zooms out": "zoom_out"}
"""the curation captioner's camera phrases (svd_fast.curate.captions.describe_motion) and the moves they name"""
_WORDS = re.compile("|".join(CAMERA_WORDS), re.IGNORECASE)


def move_from_text(text: str) -> CameraMove | None:
    """The camera move a prompt names in the captioner's words ("camera pans left", "camera zooms in",
    ...; several compose), at parse_move's default speeds; None for "static camera" or no such words.
    A speed written after them ("at 0.30 scale/s") is not used: the text-to-video model follows
    moving noise at a fraction of its speed and not at all when it is slow (0.01 of the frame per frame:
    svd_fast/assets/default_t2v/MODEL_CARD.md), so the defaults are the speeds it shows."""
    moves = [parse_move(CAMERA_WORDS[words.lower()]) for words in _WORDS.findall(text)]
    return as_move(moves) if moves else None


def camera_noise(moves, shape, generator=None) -> torch.Tensor:
    """(B, T, C, h, w) starting noise for a batch: element b moves with moves[b] (warped_noise) or,
    where that is None, is iid Gaussian; drawn element by element in batch order from `generator`
    (one for the batch, or a list of one per element)."""
    batch, num_frames, channels, height, width = shape
    if len(moves) != batch:
        raise ValueError(f"got {len(moves)} camera moves for a batch of {batch}")
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * batch
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    parts = []
    for move, g in zip(moves, generators):
        if move is None:
            parts.append(torch.randn((num_frames, channels, height, width), generator=g,
                                     device=g.device if g is not None else None).cpu())
        else:
            parts.append(warped_noise(move, num_frames, channels, height, width, generator=g))
    return torch.stack(parts)


def as_move(camera) -> CameraMove:
    """A CameraMove from one, a spec string, or a list of either (composed)."""
    if isinstance(camera, CameraMove):
        return camera
    if isinstance(camera, str):
        return parse_move(camera)
    if isinstance(camera, (list, tuple)) and camera:
        move = CameraMove()
        for part in camera:
            move = move.then(as_move(part))
        return move
    raise ValueError(f"camera must be a move name, a CameraMove or a list of them, got {camera!r}")


def moved_frames(images: torch.Tensor, move: CameraMove, num_frames: int) -> torch.Tensor:
    """(B, T, C, H, W): frame k is `images` (B, C, H, W) after k steps of `move`. The picture point
    at p (centred coordinates) lands at zoom^k p + k pan; bicubic resampling, borders repeated."""
    b, c, h, w = images.shape
    thetas = []
    for k in range(num_frames):
        z = move.zoom**k
        # affine_grid maps output to input coordinates (in [-1, 1], so a pan of the frame is 2):
        # q = (p - k * pan) / z^k
        thetas.append([[1 / z, 0.0, -2 * k * move.pan_x / z], [0.0, 1 / z, -2 * k * move.pan_y / z]])
    theta = torch.tensor(thetas, dtype=torch.float32, device=images.device)
    grid = F.affine_grid(theta, (num_frames, c, h, w), align_corners=False)
    source = images.float().repeat_interleave(num_frames, dim=0)
    moved = F.grid_sample(source, grid.repeat(b, 1, 1, 1), mode="bicubic", padding_mode="border", align_corners=False)
    moved = moved.reshape(b, num_frames, c, h, w).clamp(images.min(), images.max())  # bicubic overshoots at edges
    moved[:, 0] = images.float()  # the identity, exactly (bicubic at the pixel centres reproduces it up to rounding)
    return moved.to(images.dtype)


NOISE_RESOLUTION = 8
"""warped_noise's fine cells per latent pixel and side"""


def warped_noise(move: CameraMove, num_frames: int, channels: int, height: int, width: int,
                 generator: torch.Generator | None = None, resolution: int = NOISE_RESOLUTION) -> torch.Tensor:
    """(T, C, h, w) Gaussian noise that moves with the camera: an iid N(0, 1) field of `resolution`^2
    cells per latent pixel is laid over frame 0's picture; frame k's pixel is the sum of the cells
    that `move` carries into it after k frames (cell centres, mapped as moved_frames maps points),
    divided by the square root of their count. Every frame is iid N(0, 1) (disjoint cells), and
    frames share cells where they see the same part of the picture (the integral noise of Chang et
    al. 2024, "How I Warped Your Noise", on a finite grid; Go-with-the-Flow (Burgert et al. 2025)
    controls motion with such noise)."""
    views = []  # frame k's view in frame 0's coordinates (latent pixels from the centre): p0 = (p - k pan) / z^k
    for k in range(num_frames):
        z = move.zoom**k
        views.append(((-width / 2 - k * move.pan_x * width) / z, (width / 2 - k * move.pan_x * width) / z,
                      (-height / 2 - k * move.pan_y * height) / z, (height / 2 - k * move.pan_y * height) / z))
    x0, x1 = min(v[0] for v in views), max(v[1] for v in views)
    y0, y1 = min(v[2] for v in views), max(v[3] for v in views)
    cols, rows = math.ceil((x1 - x0) * resolution), math.ceil((y1 - y0) * resolution)
    draw_on = generator.device if generator is not None else None  # a CUDA generator draws on its device
    fine = torch.randn((channels, rows, cols), generator=generator, device=draw_on).cpu()
    xs = x0 + (torch.arange(cols, dtype=torch.float64) + 0.5) / resolution  # cell centres
    ys = y0 + (torch.arange(rows, dtype=torch.float64) + 0.5) / resolution
    frames = []
    for k in range(num_frames):
        z = move.zoom**k
        px = torch.floor(z * xs + k * move.pan_x * width + width / 2).long()
        py = torch.floor(z * ys + k * move.pan_y * height + height / 2).long()
        inside = ((py >= 0) & (py < height))[:, None] & ((px >= 0) & (px < width))[None, :]
        pixel = (py[:, None] * width + px[None, :])[inside]
        sums = torch.zeros(channels, height * width).index_add_(1, pixel, fine[:, inside])
        count = torch.zeros(height * width, dtype=torch.float64).index_add_(0, pixel, torch.ones(len(pixel), dtype=torch.float64))
        if count.min() == 0:
            raise ValueError(f"warped_noise: frame {k} magnifies a latent pixel below one cell; raise the resolution")
        frames.append((sums / count.sqrt().float()).reshape(channels, height, width))
    return torch.stack(frames)
