"""Training clips from procedural videos, a folder of videos, or webdataset shards.

Every dataset returns, for (index, seed), a dict with
  frames  (T, 3, H, W) float32 in [-1, 1]; frames[0] is the conditioning frame
  fps     frame rate of the returned frames (source fps / stride)
  motion  mean optical-flow magnitude in pixels per frame at the returned resolution (a folder
          clip's .json may fix it as `motion_px`: the motion micro-conditioning it trains with)
  image   True for an image sample: frames are independent stills of one clip (frames[0] first,
          the others in random order) and the temporal layers are bypassed for them
All randomness (start frame, stride, image-vs-video) comes from `seed`, so a sample is the same
whichever worker or process loads it. A clip that cannot be used (corrupt, too few frames) raises
BadSample; `RobustDataset` logs it and substitutes a deterministic replacement.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from svd_fast.train.procedural import ProceduralConfig, mean_flow, random_clip_spec, render_clip

log = logging.getLogger("svd_fast.train")

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
MOTION_FULL_SCALE = 0.05
"""mean flow (fraction of the frame height per frame) that maps to motion bucket 255"""


class BadSample(Exception):
    """A clip that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class DataConfig:
    """Where training clips come from and their shape."""

    source: str = "procedural"
    """'procedural' (generated videos), 'folder' (video files) or 'shards' (webdataset tars)"""
    path: str | None = None
    """folder of videos, or a shard file / folder of shards / glob, for source folder and shards"""
    num_frames: int = 14
    height: int = 320
    width: int = 576
    frame_strides: tuple[int, ...] = (1,)
    """source frames skipped between returned frames, drawn per clip (changes the fps)"""
    image_fraction: float = 0.0
    """probability that a sample is an image sample (1.0: image pretraining, stage 1)"""
    num_samples: int = 1_000_000
    """length of the procedural dataset (its clips are generated from the index)"""
    procedural: ProceduralConfig = field(default_factory=ProceduralConfig)
    num_workers: int = 0
    """DataLoader worker processes"""

    def validate(self) -> None:
        if self.source not in ("procedural", "folder", "shards", "multiview"):
            raise ValueError(f"data.source must be 'procedural', 'folder', 'shards' or 'multiview', got {self.source!r}")
        if self.source not in ("procedural", "multiview") and not self.path:
            raise ValueError(f"data.path is required for data.source={self.source!r}")
        if self.num_frames < 1 or self.height % 8 or self.width % 8 or self.height < 8 or self.width < 8:
            raise ValueError(
                f"data: need num_frames >= 1 and height/width positive multiples of 8, got "
                f"{self.num_frames} frames of {self.height}x{self.width}"
            )
        if not 0.0 <= self.image_fraction <= 1.0:
            raise ValueError(f"data.image_fraction must be in [0, 1], got {self.image_fraction}")
        if not self.frame_strides or min(self.frame_strides) < 1:
            raise ValueError(f"data.frame_strides must be positive integers, got {self.frame_strides}")


def motion_bucket(motion_px: float, height: int) -> float:
    """Motion micro-conditioning id in [0, 255] from a mean flow in pixels per frame."""
    return float(round(255 * min(max(motion_px / height / MOTION_FULL_SCALE, 0.0), 1.0)))


def estimate_motion(frames: torch.Tensor) -> float:
    """Mean Farneback optical-flow magnitude (pixels per frame) of frames (T, 3, H, W) in [-1, 1]."""
    from svd_fast.train.video_metrics import mean_flow

    return mean_flow(((frames.permute(0, 2, 3, 1).cpu().numpy() + 1) / 2).clip(0, 1))


def _pick_frames(rng: np.random.Generator, available: int, config: DataConfig, image: bool) -> list[int]:
    """Indices of the source frames to return; raises BadSample when the clip is too short."""
    t = config.num_frames
    if image:
        if available < t:
            raise BadSample(f"{available} frames, an image sample needs {t}")
        rest = rng.choice(np.arange(1, available), size=t - 1, replace=False) if t > 1 else []
        return [0, *(int(i) for i in rest)]
    strides = [s for s in config.frame_strides if (t - 1) * s + 1 <= available]
    if not strides:
        raise BadSample(f"{available} frames, a clip needs {(t - 1) * min(config.frame_strides) + 1}")
    stride = int(rng.choice(strides))
    start = int(rng.integers(0, available - (t - 1) * stride))
    return [start + i * stride for i in range(t)]


def _resize_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale (antialiased) so the frames cover height x width, then crop the centre."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return frames[..., top : top + height, left : left + width]


def decode_video(source, what: str) -> tuple[np.ndarray, float]:
    """All frames (N, H, W, 3) uint8 and the frame rate of a video file path or encoded bytes."""
    import av

    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
            if not container.streams.video:
                raise BadSample(f"{what}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except BadSample:
        raise
    except Exception as err:  # PyAV raises many error types for broken files
        raise BadSample(f"{what}: cannot decode ({type(err).__name__}: {err})") from err
    if not frames:
        raise BadSample(f"{what}: no frames")
    return np.stack(frames), fps


class _VideoDataset(torch.utils.data.Dataset):
    """Shared sampling of a clip from decoded frames."""

    def __init__(self, config: DataConfig):
        self.config = config

    def clip_from_frames(self, frames: np.ndarray, fps: float, seed: int, what: str, meta: dict | None = None) -> dict:
        cfg = self.config
        rng = np.random.default_rng(seed)
        image = bool(rng.random() < cfg.image_fraction)
        try:
            picked = _pick_frames(rng, len(frames), cfg, image)
        except BadSample as err:
            raise BadSample(f"{what}: {err}") from None
        if meta and meta.get("fps"):
            fps = float(meta["fps"])
        if not fps > 0:
            raise BadSample(f"{what}: unknown frame rate")
        x = torch.from_numpy(frames[picked]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = _resize_crop(x, cfg.height, cfg.width).contiguous()
        stride = picked[1] - picked[0] if len(picked) > 1 and not image else 1
        motion = 0.0 if image else float(meta["motion_px"]) if meta and "motion_px" in meta else estimate_motion(x)
        return {"frames": x, "fps": fps / stride, "motion": motion, "image": image}


class ProceduralVideos(_VideoDataset):
    """Generated clips (svd_fast.train.procedural); clip i is the same on every call."""

    def __len__(self):
        return self.config.num_samples

    def load(self, index: int, seed: int) -> dict:
        cfg = self.config
        rng = np.random.default_rng(seed)
        image = bool(rng.random() < cfg.image_fraction)
        spec = random_clip_spec(index, cfg.procedural)
        stride = int(rng.choice(cfg.frame_strides))
        frames, flow = render_clip(spec, (cfg.num_frames - 1) * stride + 1, cfg.height, cfg.width)
        frames, flow = frames[::stride], flow.reshape(-1, stride, *flow.shape[1:]).sum(1) if stride > 1 else flow
        if image and cfg.num_frames > 1:
            order = rng.permutation(np.arange(1, len(frames)))
            frames = frames[[0, *order]]
        # Summing per-frame flows approximates the flow over a stride (exact for steady motion).
        return {"frames": frames, "fps": spec.fps / stride, "motion": 0.0 if image else mean_flow(flow), "image": image}


class VideoFolder(_VideoDataset):
    """Every video file under a folder (sorted); an optional `<name>.json` beside it may give fps
    and `motion_px` (the motion conditioning to train the clip with, instead of its measured flow)."""

    def __init__(self, config: DataConfig):
        super().__init__(config)
        root = Path(config.path)
        if not root.is_dir():
            raise FileNotFoundError(f"data.path {root}: not a folder")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        if not self.files:
            raise ValueError(f"data.path {root}: no video files ({', '.join(VIDEO_EXTENSIONS)})")

    def __len__(self):
        return len(self.files)

    def load(self, index: int, seed: int) -> dict:
        path = self.files[index]
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        frames, fps = decode_video(path, str(path))
        return self.clip_from_frames(frames, fps, seed, str(path), meta)


def shard_paths(spec: str) -> list[str]:
    """Shard files from a .tar path, a folder of .tar files, or a glob pattern."""
    import glob

    if os.path.isdir(spec):
        paths = sorted(glob.glob(os.path.join(spec, "**", "*.tar"), recursive=True))
    elif any(c in spec for c in "*?["):
        paths = sorted(glob.glob(spec))
    else:
        paths = [spec] if os.path.isfile(spec) else []
    if not paths:
        raise FileNotFoundError(f"data.path {spec}: no .tar shards found")
    return paths


class WebDatasetShards(_VideoDataset):
    """Random access to `<key>.mp4` + `<key>.json` samples of webdataset tar shards.

    The index (shard, key -> member offsets) is built once from the tar headers, so a clip is read
    with one seek; the curation pipeline (svd_fast.curate.shards) writes this format.
    """

    def __init__(self, config: DataConfig):
        super().__init__(config)
        self.samples: list[tuple[str, str, dict[str, tuple[int, int]]]] = []
        for path in shard_paths(config.path):
            members: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(path) as tar:
                    for member in tar:
                        if member.isfile():
                            key, _, ext = member.name.partition(".")
                            members.setdefault(key, {})[ext] = (member.offset_data, member.size)
            except (tarfile.TarError, OSError) as err:
                log.warning("skipping shard %s: unreadable (%s)", path, err)
                continue
            for key, parts in members.items():
                if "mp4" in parts:
                    self.samples.append((path, key, parts))
                else:
                    log.warning("skipping %s in %s: no .mp4 member", key, path)
        if not self.samples:
            raise ValueError(f"data.path {config.path}: the shards hold no mp4 samples")

    def __len__(self):
        return len(self.samples)

    @staticmethod
    def _read(path: str, offset_size: tuple[int, int]) -> bytes:
        offset, size = offset_size
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def load(self, index: int, seed: int) -> dict:
        path, key, parts = self.samples[index]
        what = f"{path}:{key}"
        meta = None
        if "json" in parts:
            try:
                meta = json.loads(self._read(path, parts["json"]))
            except ValueError as err:
                raise BadSample(f"{what}.json: invalid JSON ({err})") from err
        frames, fps = decode_video(self._read(path, parts["mp4"]), what + ".mp4")
        return self.clip_from_frames(frames, fps, seed, what, meta)


@contextlib.contextmanager
def single_thread():
    """Run small tensor ops on one intra-op thread: decoding, resizing and rendering a clip are
    thousands of tiny ops, which a thread pool slows down (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class RobustDataset(torch.utils.data.Dataset):
    """Takes (index, seed) items; a BadSample is logged and replaced by a deterministic other clip."""

    MAX_TRIES = 20

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        for attempt in range(self.MAX_TRIES):
            candidate = (index + attempt * 7919) % len(self.dataset)  # a prime stride: new clips each try
            try:
                with single_thread():
                    sample = self.dataset.load(candidate, seed + attempt)
            except BadSample as err:
                log.warning("skipping bad clip (index %d): %s", candidate, err)
                continue
            sample["seed"] = seed
            return sample
        raise RuntimeError(f"{self.MAX_TRIES} consecutive bad clips starting at index {index}: check the data")


def build_dataset(config: DataConfig) -> RobustDataset:
    config.validate()
    if config.source == "multiview":  # SVD-MV: orbits around procedural 3D objects (svd_fast.train.render3d)
        from svd_fast.train.render3d import OrbitDataset

        return RobustDataset(OrbitDataset(config))
    kind = {"procedural": ProceduralVideos, "folder": VideoFolder, "shards": WebDatasetShards}[config.source]
    return RobustDataset(kind(config))


def sample_seed(base_seed: int, position: int) -> int:
    """Seed of the sample at a global position (independent of world size and workers)."""
    return int(np.random.SeedSequence([base_seed, position]).generate_state(1)[0])


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


@dataclass(frozen=True)
class BatchPlan:
    """Which samples each rank sees at each micro-step.

    Global sample position p = ((step * accum + micro) * world + rank) * batch + j; positions run
    through seeded permutations of the dataset, one per epoch. The same global batch is therefore
    seen whatever the split into processes and accumulation steps, and any step can be planned
    directly (resuming needs no replay of the loader).
    """

    dataset_size: int
    batch_size: int
    grad_accum: int
    world_size: int
    rank: int
    seed: int

    def position(self, step: int, micro: int, j: int) -> int:
        return ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.batch_size + j

    def item(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.dataset_size)
        return int(_epoch_order(self.seed, epoch, self.dataset_size)[offset]), sample_seed(self.seed, position)

    def micro_batches(self, start_step: int):
        """(step, micro, [(index, seed), ...]) from start_step on, forever."""
        step = start_step
        while True:
            for micro in range(self.grad_accum):
                yield step, micro, [self.item(self.position(step, micro, j)) for j in range(self.batch_size)]
            step += 1


def collate(samples: list[dict]) -> dict:
    batch = {
        "frames": torch.stack([s["frames"] for s in samples]),
        "fps": torch.tensor([s["fps"] for s in samples], dtype=torch.float32),
        "motion": torch.tensor([s["motion"] for s in samples], dtype=torch.float32),
        "image": torch.tensor([s["image"] for s in samples], dtype=torch.bool),
        "seed": torch.tensor([s["seed"] for s in samples], dtype=torch.int64),
    }
    if "elevation" in samples[0]:  # multi-view orbits: camera elevation in degrees
        batch["elevation"] = torch.tensor([s["elevation"] for s in samples], dtype=torch.float32)
    return batch


def micro_batch_loader(dataset: RobustDataset, plan: BatchPlan, start_step: int, num_workers: int = 0):
    """Iterator of (step, micro, batch) with loading in `num_workers` background processes."""
    batches = plan.micro_batches(start_step)
    if num_workers == 0:
        for step, micro, items in batches:
            yield step, micro, collate([dataset[i] for i in items])
        return
    # The loader consumes item lists; step numbers are recomputed alongside in the same order.
    steps = plan.micro_batches(start_step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=(items for _, _, items in batches), collate_fn=collate,
        num_workers=num_workers, prefetch_factor=2, persistent_workers=False,
    )
    for (step, micro, _), batch in zip(steps, loader):
        yield step, micro, batch

