"""A procedural 3D world rendered from an orbit: the multi-view (SVD-MV) training and evaluation data.

An object is the union of one to four textured primitives (sphere, box, cylinder, torus, capsule),
each with its own pose, size, two colours and a texture (plain, stripes, checker, dots, gradient)
defined in the primitive's own coordinates, so a turn of the object shows as a turn of its pattern.
Objects are drawn from a seed (`random_object(seed)`): training and held-out objects are disjoint
seed ranges (`HELD_OUT_SEEDS`).

Rendering is sphere tracing of the exact signed distance functions of the primitives, Lambert
shading under one directional light fixed in the world plus an ambient term, no shadows, on a
white background, supersampled 2x2 and box-filtered.

Coordinates: world z points up; the object sits around the origin inside the unit ball. An orbit
camera at elevation e and azimuth a sits at radius * (cos e cos a, cos e sin a, sin e) and looks at
the origin. Its axes: forward f = -position / |position|, right r = normalise(f x z), up u = r x f.
A world point p has camera coordinates x = (p - c).r, y = -(p - c).u (image rows grow downwards),
z = (p - c).f and projects (pinhole, focal length F pixels, principal point at the image centre) to
column = W/2 + F x / z, row = H/2 + F y / z, where pixel (row i, column j) covers
[i, i+1) x [j, j+1) (its centre is at i + 0.5, j + 0.5). F = (W/2) / tan(fov/2), fov horizontal.
An orbit of V views steps the azimuth by 360/V degrees (counter-clockwise seen from above).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("sphere", "box", "cylinder", "torus", "capsule")
TEXTURES = ("plain", "stripes", "checker", "dots", "gradient")
HELD_OUT_SEEDS = 10_000_000
"""objects with seeds from here on are never trained on (evaluation only)"""
ELEVATION_RANGE = (-5.0, 30.0)
"""degrees, as SVD-MV's Objaverse renders (paper section 4.5)"""
RADIUS = 3.0
FOV_DEGREES = 40.0
BACKGROUND = 1.0
"""white background (in [0, 1])"""
AMBIENT = 0.35
MARCH_STEPS = 64
HIT_EPS = 1e-3
BOUND = 1.6
"""every object lies inside the ball of this radius around the origin (rays start at its edge)"""


@dataclass(frozen=True)
class Primitive:
    kind: str
    center: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...]
    """3x3 matrix whose columns are the primitive's local axes in world coordinates"""
    size: tuple[float, ...]
    """sphere (r,); box (half x, half y, half z); cylinder (r, half height); torus (R, r); capsule (r, half length)"""
    colours: tuple[tuple[float, float, float], tuple[float, float, float]]
    """two colours in [0, 1] that the texture mixes"""
    texture: str = "plain"
    frequency: float = 4.0
    """pattern cycles per local unit"""


@dataclass(frozen=True)
class Object3D:
    primitives: tuple[Primitive, ...]
    light: tuple[float, float, float] = (0.4, -0.5, 0.77)
    """direction towards the light, world coordinates (normalised when rendering)"""


@dataclass(frozen=True)
class Camera:
    position: torch.Tensor
    """(3,) world position"""
    right: torch.Tensor
    up: torch.Tensor
    forward: torch.Tensor
    focal: float
    """pixels"""
    height: int
    width: int


def orbit_cameras(num_views: int, elevation_deg: float, height: int, width: int, azimuth_deg: float = 0.0,
                  radius: float = RADIUS, fov_deg: float = FOV_DEGREES) -> list[Camera]:
    """The V cameras of an orbit at one elevation, the first at `azimuth_deg`."""
    focal = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    cameras = []
    e = math.radians(elevation_deg)
    for k in range(num_views):
        a = math.radians(azimuth_deg + 360.0 * k / num_views)
        position = torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)],
                                dtype=torch.float64) * radius
        forward = -position / position.norm()
        right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        right = right / right.norm()
        up = torch.linalg.cross(right, forward)
        cameras.append(Camera(position.float(), right.float(), up.float(), forward.float(), focal, height, width))
    return cameras


def camera_rays(camera: Camera, supersample: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions (H*s * W*s, 3) through sub-pixel centres, row-major."""
    s = supersample
    rows = (torch.arange(camera.height * s, dtype=torch.float32) + 0.5) / s
    cols = (torch.arange(camera.width * s, dtype=torch.float32) + 0.5) / s
    v, u = torch.meshgrid(rows - camera.height / 2, cols - camera.width / 2, indexing="ij")
    d = (camera.forward + (u[..., None] / camera.focal) * camera.right - (v[..., None] / camera.focal) * camera.up)
    d = d.reshape(-1, 3)
    d = d / d.norm(dim=1, keepdim=True)
    return camera.position.expand_as(d), d


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated colour, never close to the white background (HSV with s, v bounded)."""
    import colorsys

    h, s, v = rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.35, 0.95)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))


def _size(kind: str, scale: float, rng: np.random.Generator) -> tuple[float, ...]:
    if kind == "sphere":
        return (scale,)
    if kind == "box":
        return tuple(float(x) for x in scale * rng.uniform(0.45, 1.0, size=3))
    if kind == "cylinder":
        return (scale * rng.uniform(0.4, 0.8), scale * rng.uniform(0.5, 1.0))
    if kind == "torus":
        major = scale * rng.uniform(0.7, 1.0)
        return (major, major * rng.uniform(0.2, 0.45))
    return (scale * rng.uniform(0.25, 0.45), scale * rng.uniform(0.4, 0.8))  # capsule


def random_object(seed: int) -> Object3D:
    """An object of 1-4 textured primitives, the same for the same seed; it fits in the unit ball."""
    rng = np.random.default_rng([seed, 3])
    count = int(rng.choice([1, 2, 2, 3, 3, 4]))
    primitives = []
    for i in range(count):
        kind = str(rng.choice(KINDS))
        scale = rng.uniform(0.45, 0.7) if i == 0 else rng.uniform(0.2, 0.45)
        center = np.zeros(3) if i == 0 else rng.normal(size=3) * 0.35
        reach = np.linalg.norm(center) + scale * math.sqrt(3)  # the largest extent of any kind of this scale
        if reach > 1.0:
            center *= max(0.0, 1.0 - scale * math.sqrt(3)) / max(np.linalg.norm(center), 1e-9)
        texture = str(rng.choice(TEXTURES))
        primitives.append(Primitive(
            kind=kind, center=tuple(float(c) for c in center),
            rotation=tuple(tuple(float(x) for x in row) for row in _rotation(rng)),
            size=_size(kind, scale, rng), colours=(_colour(rng), _colour(rng)), texture=texture,
            frequency=float(rng.uniform(2.0, 5.0)),
        ))
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = rng.uniform(math.radians(35), math.radians(70))
    light = (math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation))
    return Object3D(tuple(primitives), light)


# ------------------------------------------------------------------------------ signed distances
def _local(points: torch.Tensor, prim: Primitive) -> torch.Tensor:
    """World points (N, 3) in the primitive's local frame: R^T (p - c)."""
    rotation = torch.tensor(prim.rotation, dtype=points.dtype)
    return (points - torch.tensor(prim.center, dtype=points.dtype)) @ rotation


def _sdf_local(q: torch.Tensor, kind: str, size: tuple[float, ...]) -> torch.Tensor:
    """Exact signed distance of a primitive centred at the origin, axis z, at local points (N, 3)."""
    if kind == "sphere":
        return q.norm(dim=1) - size[0]
    if kind == "box":
        d = q.abs() - torch.tensor(size, dtype=q.dtype)
        return d.clamp(min=0).norm(dim=1) + d.max(dim=1).values.clamp(max=0)
    if kind == "cylinder":
        d = torch.stack([q[:, :2].norm(dim=1) - size[0], q[:, 2].abs() - size[1]], dim=1)
        return d.clamp(min=0).norm(dim=1) + d.max(dim=1).values.clamp(max=0)
    if kind == "torus":
        ring = torch.stack([q[:, :2].norm(dim=1) - size[0], q[:, 2]], dim=1)
        return ring.norm(dim=1) - size[1]
    if kind == "capsule":
        axis = torch.zeros_like(q)
        axis[:, 2] = q[:, 2].clamp(-size[1], size[1])
        return (q - axis).norm(dim=1) - size[0]
    raise ValueError(f"unknown primitive kind {kind!r}; choose one of {KINDS}")


def scene_sdf(points: torch.Tensor, obj: Object3D) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of the union (N,) and the index of the nearest primitive (N,)."""
    distances = torch.stack([_sdf_local(_local(points, p), p.kind, p.size) for p in obj.primitives], dim=1)
    return distances.min(dim=1)


def _texture(q: torch.Tensor, prim: Primitive) -> torch.Tensor:
    """Mix weight in [0, 1] of the second colour at local points (N, 3)."""
    f = prim.frequency
    if prim.texture == "plain":
        return torch.zeros(len(q))
    if prim.texture == "stripes":
        return (torch.sin(2 * math.pi * f * q[:, 2]) > 0).float()
    if prim.texture == "checker":
        return (torch.floor(f * q).sum(dim=1) % 2).float()
    if prim.texture == "dots":
        cell = f * q - torch.floor(f * q) - 0.5
        return (cell.norm(dim=1) < 0.33).float()
    if prim.texture == "gradient":
        extent = max(prim.size)
        return ((q[:, 2] / extent + 1) / 2).clamp(0, 1)
    raise ValueError(f"unknown texture {prim.texture!r}; choose one of {TEXTURES}")


def _shade(points: torch.Tensor, obj: Object3D) -> torch.Tensor:
    """Lambert-shaded colours (N, 3) of surface points."""
    _, nearest = scene_sdf(points, obj)
    h = 1e-3
    offsets = torch.eye(3) * h
    normal = torch.stack([scene_sdf(points + o, obj)[0] - scene_sdf(points - o, obj)[0] for o in offsets], dim=1)
    normal = normal / normal.norm(dim=1, keepdim=True).clamp(min=1e-12)
    light = torch.tensor(obj.light, dtype=points.dtype)
    light = light / light.norm()
    lambert = AMBIENT + (1 - AMBIENT) * (normal @ light).clamp(min=0)
    colours = torch.empty_like(points)
    for i, prim in enumerate(obj.primitives):
        mask = nearest == i
        if mask.any():
            w = _texture(_local(points[mask], prim), prim)[:, None]
            a, b = torch.tensor(prim.colours[0]), torch.tensor(prim.colours[1])
            colours[mask] = (1 - w) * a + w * b
    return colours * lambert[:, None]


def trace(origins: torch.Tensor, directions: torch.Tensor, obj: Object3D) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere tracing: (hit mask (N,), hit points (N, 3)). Rays start where they enter the bounding
    ball; only rays still marching are evaluated at each step."""
    # Entry into the ball |p| <= BOUND: t = -o.d - sqrt((o.d)^2 - |o|^2 + BOUND^2).
    od = (origins * directions).sum(dim=1)
    disc = od**2 - (origins**2).sum(dim=1) + BOUND**2
    t = (-od - disc.clamp(min=0).sqrt()).clamp(min=0)
    far = -od + disc.clamp(min=0).sqrt()
    active = disc > 0
    hit = torch.zeros(len(origins), dtype=torch.bool)
    for _ in range(MARCH_STEPS):
        index = active.nonzero().flatten()
        if len(index) == 0:
            break
        p = origins[index] + t[index, None] * directions[index]
        d, _ = scene_sdf(p, obj)
        done = d < HIT_EPS
        hit[index[done]] = True
        t[index] = t[index] + torch.where(done, torch.zeros_like(d), d)
        active[index[done | (t[index] > far[index])]] = False
    points = origins + t[:, None] * directions
    return hit, points


def render_view(obj: Object3D, camera: Camera, supersample: int = 2) -> torch.Tensor:
    """One view (3, H, W) in [0, 1]."""
    origins, directions = camera_rays(camera, supersample)
    hit, points = trace(origins, directions, obj)
    image = torch.full((len(origins), 3), BACKGROUND)
    if hit.any():
        image[hit] = _shade(points[hit], obj)
    image = image.reshape(camera.height * supersample, camera.width * supersample, 3).permute(2, 0, 1)
    if supersample > 1:
        image = F.avg_pool2d(image[None], supersample)[0]
    return image.clamp(0, 1)


def render_orbit(obj: Object3D, num_views: int, elevation_deg: float, size: int, azimuth_deg: float = 0.0,
                 supersample: int = 2) -> torch.Tensor:
    """The orbit's views (V, 3, size, size) in [0, 1]; view 0 at `azimuth_deg`."""
    with torch.no_grad():
        cameras = orbit_cameras(num_views, elevation_deg, size, size, azimuth_deg)
        return torch.stack([render_view(obj, cam, supersample) for cam in cameras])


def orbit_sample(seed: int, num_views: int, size: int, elevation_range=ELEVATION_RANGE) -> dict:
    """An object and an orbit drawn from `seed`: {'frames' (V, 3, H, W) in [0, 1], 'elevation' (deg),
    'azimuth' (deg of view 0), 'object'}. The object is random_object(seed); elevation uniform in
    the range, first azimuth uniform."""
    rng = np.random.default_rng([seed, 7])
    elevation = float(rng.uniform(*elevation_range))
    azimuth = float(rng.uniform(0, 360))
    obj = random_object(seed)
    return {"frames": render_orbit(obj, num_views, elevation, size, azimuth), "elevation": elevation,
            "azimuth": azimuth, "object": obj}


ORBIT_FPS = 8
"""fps id a multi-view model is trained and sampled with (fixed: the default model's fps)"""
ORBIT_MOTION_BUCKET = 127
"""motion bucket id a multi-view model is trained and sampled with (fixed: the default model's)"""


class OrbitDataset(torch.utils.data.Dataset):
    """Training orbits for svd_fast.train (DataConfig source 'multiview'): item `index` is the object
    random_object(index) (indices must stay below HELD_OUT_SEEDS), seen from an orbit of
    data.num_frames views whose elevation (uniform in ELEVATION_RANGE) and first azimuth come from
    the sample's seed. Frames in [-1, 1]; fps and motion bucket fixed (ORBIT_FPS, ORBIT_MOTION_BUCKET)."""

    def __init__(self, config):
        if config.height != config.width:
            raise ValueError(f"data: multi-view orbits are square, got {config.height}x{config.width}")
        if config.num_samples > HELD_OUT_SEEDS:
            raise ValueError(f"data.num_samples {config.num_samples} would reach the held-out objects "
                             f"(seeds from {HELD_OUT_SEEDS})")
        if config.image_fraction:
            raise ValueError("data.image_fraction must be 0 for multi-view orbits")
        self.config = config

    def __len__(self):
        return self.config.num_samples

    def load(self, index: int, seed: int) -> dict:
        from svd_fast.train.data import MOTION_FULL_SCALE

        cfg = self.config
        rng = np.random.default_rng([seed, 11])
        elevation = float(rng.uniform(*ELEVATION_RANGE))
        azimuth = float(rng.uniform(0, 360))
        frames = render_orbit(random_object(index), cfg.num_frames, elevation, cfg.height, azimuth) * 2 - 1
        # the mean flow whose motion bucket (svd_fast.train.data.motion_bucket) is ORBIT_MOTION_BUCKET
        motion = ORBIT_MOTION_BUCKET / 255 * MOTION_FULL_SCALE * cfg.height
        return {"frames": frames, "fps": float(ORBIT_FPS), "motion": motion, "image": False, "elevation": elevation}
