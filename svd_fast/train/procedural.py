"""Procedurally generated training videos with known motion.

A clip is a textured background seen by a camera that pans and zooms, with one to three textured
shapes (disc, square, triangle, ellipse) moving, rotating and scaling over it. Everything is
analytic, so besides the frames the generator returns the exact optical flow of every frame pair:
the ground truth for the motion micro-conditioning and for tests of flow estimators.

Coordinates: "world" points live on the background plane in units of frame heights; a camera at
centre c(t) with zoom s(t) shows the world square of half-height 0.5 / s(t) around c(t). Pixel
(x, y) of an H x W frame sits at frame coordinates u = (x + 0.5 - W/2) / H, v = (y + 0.5 - H/2) / H,
and world = c + u / s. Shapes have local coordinates l = R(-theta) (world - p) / k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = ("disc", "square", "triangle", "ellipse")
FILLS = ("stripes", "checker", "noise", "rings")
BACKGROUND_EXTENT = 3.0  # the background texture covers [-1.5, 1.5]^2 world units (frame heights)


@dataclass(frozen=True)
class ProceduralConfig:
    """What the generated clips look like and how fast things move."""

    max_shapes: int = 3
    fps_choices: tuple[float, ...] = (6.0, 8.0, 12.0)
    """frame rates a clip is rendered at; motion per frame is speed / fps"""
    max_pan: float = 0.4
    """camera pan speed, frame heights per second"""
    max_zoom: float = 0.3
    """camera zoom speed, log scale per second"""
    max_speed: float = 0.6
    """shape speed, frame heights per second"""
    max_spin: float = 2.0
    """shape rotation, radians per second"""
    max_grow: float = 0.5
    """shape scaling, log scale per second"""
    static_fraction: float = 0.1
    """fraction of clips with no motion at all"""
    texture_size: int = 192
    """background texture resolution (pixels across BACKGROUND_EXTENT)"""


@dataclass
class Shape:
    kind: str
    fill: str
    colours: np.ndarray  # (2, 3) in [-1, 1]
    frequency: float  # fill pattern frequency (cycles per unit of local coordinates)
    position: np.ndarray  # world position at t = 0
    velocity: np.ndarray  # world units per frame
    angle: float
    spin: float  # radians per frame
    size: float  # half-size in world units at t = 0
    grow: float  # log scale per frame
    fill_seed: int


@dataclass
class ClipSpec:
    """Everything needed to render a clip (and its exact flow) at any resolution."""

    fps: float
    camera_start: np.ndarray  # world centre at t = 0
    camera_velocity: np.ndarray  # world units per frame
    zoom_rate: float  # log zoom per frame
    texture: torch.Tensor  # (3, S, S) background, values in [-1, 1]
    shapes: list[Shape]


def _smooth_noise(gen: torch.Generator, size: int, cells: int, channels: int = 3) -> torch.Tensor:
    """Band-limited noise (channels, size, size) in about [-1, 1]: bicubic upsampling of random cells."""
    coarse = torch.rand(1, channels, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour in [-1, 1] (HSV with high saturation and value, converted to RGB)."""
    hue = rng.uniform(0, 6)
    sat, val = rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)
    c = val * sat
    x = c * (1 - abs(hue % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(hue) % 6]
    return (np.array(rgb) + (val - c)) * 2 - 1


def _background(rng: np.random.Generator, gen: torch.Generator, size: int) -> torch.Tensor:
    """Two colours mixed by smooth noise, plus fine detail and optional stripes."""
    a, b = (torch.tensor(_random_colour(rng), dtype=torch.float32).reshape(3, 1, 1) * 0.7 for _ in range(2))
    mix = (_smooth_noise(gen, size, int(rng.integers(3, 7)), 1) + 1) / 2
    tex = a * mix + b * (1 - mix)
    tex = tex + 0.15 * _smooth_noise(gen, size, int(rng.integers(12, 24)))
    tex = tex + 0.12 * _smooth_noise(gen, size, int(rng.integers(40, 64)))
    if rng.random() < 0.5:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        angle, freq = rng.uniform(0, math.pi), rng.uniform(3, 9)
        tex = tex + 0.2 * torch.sin(math.pi * freq * (xs * math.cos(angle) + ys * math.sin(angle)))
    return tex.clamp(-1, 1)


def random_clip_spec(seed: int, config: ProceduralConfig = ProceduralConfig()) -> ClipSpec:
    """A random clip, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    fps = float(rng.choice(config.fps_choices))
    static = rng.random() < config.static_fraction
    motion = 0.0 if static else 1.0

    def vec(limit):
        return rng.uniform(-limit, limit, 2) * motion / fps

    # Camera motion: a pan, a zoom, both, or neither (objects only).
    mode = rng.integers(4)
    camera_velocity = vec(config.max_pan) if mode in (1, 3) else np.zeros(2)
    zoom_rate = float(rng.uniform(-config.max_zoom, config.max_zoom) * motion / fps) if mode in (2, 3) else 0.0
    shapes = []
    for _ in range(int(rng.integers(1, config.max_shapes + 1))):
        colours = np.stack([_random_colour(rng), _random_colour(rng)])
        shapes.append(
            Shape(
                kind=str(rng.choice(SHAPES)),
                fill=str(rng.choice(FILLS)),
                colours=colours,
                frequency=float(rng.uniform(1.5, 4.0)),
                position=rng.uniform(-0.35, 0.35, 2),
                velocity=vec(config.max_speed),
                angle=float(rng.uniform(0, 2 * math.pi)),
                spin=float(rng.uniform(-config.max_spin, config.max_spin) * motion / fps),
                size=float(rng.uniform(0.1, 0.22)),
                grow=float(rng.uniform(-config.max_grow, config.max_grow) * motion / fps) * (rng.random() < 0.5),
                fill_seed=int(rng.integers(2**31)),
            )
        )
    return ClipSpec(
        fps=fps,
        camera_start=rng.uniform(-0.3, 0.3, 2),
        camera_velocity=camera_velocity,
        zoom_rate=zoom_rate,
        texture=_background(rng, gen, config.texture_size),
        shapes=shapes,
    )


def _frame_grid(height: int, width: int) -> torch.Tensor:
    """Frame coordinates (H, W, 2) [u, v] of pixel centres, in frame heights, origin at the centre."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5 - height / 2) / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5 - width / 2) / height
    v, u = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([u, v], dim=-1)


def _camera(spec: ClipSpec, t: float):
    centre = torch.tensor(spec.camera_start + spec.camera_velocity * t)
    return centre, math.exp(spec.zoom_rate * t)


def _shape_pose(shape: Shape, t: float):
    return torch.tensor(shape.position + shape.velocity * t), shape.angle + shape.spin * t, shape.size * math.exp(shape.grow * t)


def _rotate(p: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]], dim=-1)


def _inside(kind: str, local: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of a unit shape at local coordinates (..., 2).

    `pixel` is the size of one pixel in local units: edges ramp over about one pixel.
    """
    x, y = local[..., 0], local[..., 1]
    if kind == "disc":
        dist = torch.sqrt(x**2 + y**2) - 1
    elif kind == "ellipse":
        dist = torch.sqrt((x / 1.0) ** 2 + (y / 0.55) ** 2) - 1
    elif kind == "square":
        dist = torch.maximum(x.abs(), y.abs()) - 0.85
    else:  # equilateral triangle pointing up, inscribed in the unit circle
        edges = [(0.0, -1.0), (math.sqrt(3) / 2, 0.5), (-math.sqrt(3) / 2, 0.5)]
        dist = torch.stack([x * nx + y * ny for nx, ny in edges]).amax(0) - 0.5
    return (0.5 - dist / pixel).clamp(0, 1)


def _fill(shape: Shape, local: torch.Tensor) -> torch.Tensor:
    """Colour (..., 3) of the shape's texture at local coordinates (moves rigidly with the shape)."""
    x, y = local[..., 0], local[..., 1]
    f = shape.frequency
    if shape.fill == "stripes":
        mix = (torch.sin(math.pi * f * x) + 1) / 2
    elif shape.fill == "checker":
        mix = ((torch.floor(f * x) + torch.floor(f * y)) % 2).to(x.dtype)
    elif shape.fill == "rings":
        mix = (torch.cos(math.pi * f * torch.sqrt(x**2 + y**2)) + 1) / 2
    else:  # smooth noise sampled in local coordinates
        gen = torch.Generator().manual_seed(shape.fill_seed)
        noise = _smooth_noise(gen, 32, 5, 1)[None].double()
        grid = (local / 1.2).reshape(1, -1, 1, 2).to(noise.dtype)
        mix = (F.grid_sample(noise, grid, align_corners=False, padding_mode="border").reshape(x.shape) + 1) / 2
    a, b = (torch.tensor(c, dtype=local.dtype) for c in shape.colours)
    return a * mix[..., None] + b * (1 - mix[..., None])


def _world(spec: ClipSpec, grid: torch.Tensor, t: float) -> torch.Tensor:
    centre, zoom = _camera(spec, t)
    return centre + grid / zoom


def _to_frame(spec: ClipSpec, world: torch.Tensor, t: float) -> torch.Tensor:
    centre, zoom = _camera(spec, t)
    return (world - centre) * zoom


def render_frame(spec: ClipSpec, t: float, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t as (3, H, W) in [-1, 1], and the exact flow to frame t + 1 as (2, H, W) in pixels."""
    grid = _frame_grid(height, width)
    world = _world(spec, grid, t)
    tex = spec.texture[None].double()
    sample = (world / (BACKGROUND_EXTENT / 2)).reshape(1, height, width, 2)
    image = F.grid_sample(tex, sample, align_corners=False, padding_mode="reflection")[0].permute(1, 2, 0)
    # Background flow: the world point stays put while the camera moves.
    target = _to_frame(spec, world, t + 1)
    zoom = _camera(spec, t)[1]
    for shape in spec.shapes:
        pos, angle, size = _shape_pose(shape, t)
        local = _rotate(world - pos, -angle) / size
        cover = _inside(shape.kind, local, pixel=1.0 / (height * zoom * size))[..., None]
        image = image * (1 - cover) + _fill(shape, local) * cover
        # Shape flow: the local point is carried by the shape's motion (later shapes are on top).
        pos1, angle1, size1 = _shape_pose(shape, t + 1)
        moved = _to_frame(spec, pos1 + _rotate(local * size1, angle1), t + 1)
        target = torch.where(cover > 0.5, moved, target)
    flow = (target - grid) * height  # frame units are heights: scale to pixels
    return image.permute(2, 0, 1).float().clamp(-1, 1), flow.permute(2, 0, 1).float()


def render_clip(spec: ClipSpec, num_frames: int, height: int, width: int, start: int = 0):
    """(frames (T, 3, H, W) in [-1, 1], flow (T-1, 2, H, W) in pixels) for frames start..start+T-1."""
    frames, flows = zip(*(render_frame(spec, start + t, height, width) for t in range(num_frames)))
    return torch.stack(frames), torch.stack(flows[:-1]) if num_frames > 1 else torch.zeros(0, 2, height, width)


def mean_flow(flow: torch.Tensor) -> float:
    """Mean per-pixel displacement magnitude (pixels per frame) of flow fields (..., 2, H, W)."""
    if flow.numel() == 0:
        return 0.0
    return float(flow.norm(dim=-3).mean())
