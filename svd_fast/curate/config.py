"""Settings of the curation pipeline: one small dataclass per stage, loadable from JSON/TOML.

Thresholds follow the SVD paper (arXiv 2311.15127, section 3.1 and appendix C/E.2.2); every field
can be overridden from a config file (`--config F`) or the command line (`--set cuts.min_clip_seconds=3`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any


def _default_cascade() -> list[dict]:
    # The paper's cascade at three rates: every frame for hard cuts, 4 fps for short gradual
    # transitions and 1 fps for long ones. Thresholds were chosen by measuring precision and
    # recall on the labelled set (tests/curate/data, bench/curate.py --cuts-only).
    return [
        {"name": "cut", "kind": "cut", "ratio": 3.0, "min_change": 0.08},
        {"name": "gradual_4fps", "kind": "gradual", "fps": 4.0},
        {"name": "gradual_1fps", "kind": "gradual", "fps": 1.0},
    ]


@dataclass
class DecodeConfig:
    """Stage 1: probe and decode (always on: every later stage needs its frames)."""

    extensions: list[str] = field(default_factory=lambda: [".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"])
    """Files under INPUT_DIR with these suffixes (case-insensitive) are sources."""
    key_frame_short_side: int = 448
    """Short side of the first/middle/last frames kept for OCR and CLIP (never upscaled)."""
    caption_frames: int = 8
    """Frames sampled uniformly over a clip for the video captioner / sliding-window captions."""
    caption_short_side: int = 384
    """Short side of the caption frames."""


@dataclass
class CutConfig:
    """Stage 2: cascaded cut detection and keyframe-aware clipping."""

    enabled: bool = True
    """Off: each source is a single clip."""
    levels: list[dict] = field(default_factory=_default_cascade)
    """The cascade: name, kind (cut: every frame; gradual: frames 1/fps seconds apart), and the
    cut level's ratio (its change over the 90th percentile of the changes within a second) and
    min_change (histogram / grey change in [0, 1])."""
    detect_short_side: int = 144
    """Frames are decoded at this short side for detection."""
    gradual_min_change: float = 0.12
    """Gradual levels: frames 1/fps apart must differ at least this much (histogram / grey, 0..1)..."""
    gradual_ratio: float = 2.5
    """... and this many times more than the median change within context_seconds."""
    context_seconds: float = 3.0
    gradual_max_residual: float = 0.35
    """Frames inside a gradual transition must be a mixture of the two shots within this relative error."""
    gradual_max_ramp_error: float = 0.2
    """RMS distance of the mixture weights from a ramp between the shots."""
    gradual_min_contrast: float = 0.05
    """The shots on both sides of a gradual transition differ by at least this mean grey level (0..1)."""
    max_transition_seconds: float = 4.0
    """Longest gradual transition looked for."""
    min_clip_seconds: float = 2.0
    """Clips shorter than this are recorded with reason 'too_short' and not scored."""
    keyframe_snap_seconds: float = 0.5
    """A clip start moves forward to the first keyframe within this many seconds, if any."""


@dataclass
class MotionConfig:
    """Stage 3: Farneback optical flow magnitude (the paper's static-clip filter)."""

    enabled: bool = True
    fps: float = 2.0
    """Flow is computed between frames sampled at this rate."""
    short_side: int = 16
    """Frames are resized to this short side before the flow."""


@dataclass
class TextConfig:
    """Stage 4: fraction of the frame covered by text boxes (first, middle, last frame)."""

    enabled: bool = True
    detector: str = "tesseract"
    """A name registered in svd_fast.curate.text.DETECTORS."""
    min_confidence: float = 50.0
    """Words below this OCR confidence (0-100) are ignored."""
    ocr_short_side: int = 360
    """Frames are resized to this short side before OCR (tesseract needs legible glyph sizes)."""


@dataclass
class ClipConfig:
    """Stage 5: CLIP embeddings, text-image similarity and aesthetic score."""

    enabled: bool = True
    model_path: str = ""
    """Local folder of a transformers CLIPModel + CLIPProcessor (required when enabled)."""
    aesthetic_head: str = ""
    """safetensors file of a linear/MLP head over the CLIP image embedding; empty: no aesthetic score."""
    aesthetic_activation: str = "none"
    """Activation between head layers: none (as the LAION aesthetic MLP), relu or gelu."""


@dataclass
class CaptionConfig:
    """Stage 6: synthetic captions."""

    enabled: bool = True
    strategy: str = "paper"
    """paper (image caption of the middle frame + video caption + LLM summary) or sharegpt4video
    (differential sliding-window captions over keyframes, then a summary)."""
    backend: str = "trivial"
    """trivial (offline colour/motion describer) or hf (transformers models from the paths below)."""
    image_model: str = ""
    """Local image-to-text model (BLIP, BLIP-2, GIT...) for the middle-frame caption."""
    video_model: str = ""
    """Local GIT-style video captioner (frames stacked in pixel_values, e.g. git-base-vatex)."""
    summary_model: str = ""
    """Local causal LM that merges captions into one."""
    max_new_tokens: int = 40
    primary: str = "image"
    """Which caption goes into the 'caption' column and the CLIP similarity: image, video or summary."""


@dataclass
class FilterConfig:
    """Stage 7: percentile filters over the whole data set (paper E.2.2 and appendix C)."""

    motion_drop_lowest: float = 0.25
    aesthetic_drop_lowest: float = 0.25
    clip_score_drop_lowest: float = 0.5
    text_area_drop_highest: float = 0.25
    max_text_area: float = 0.07
    """Absolute cap on the text-box fraction (LVD-F)."""
    min_motion: float | None = None
    """Absolute thresholds: when set, they replace the percentile of that score."""
    min_aesthetic: float | None = None
    min_clip_score: float | None = None


@dataclass
class ShardConfig:
    """Webdataset tar shards of the kept clips (<key>.mp4 + <key>.json)."""

    enabled: bool = True
    clips_per_shard: int = 256
    short_side: int = 576
    """Kept clips are re-encoded with this short side at most (the paper's highest training size)."""
    crf: int = 18


@dataclass
class RayConfig:
    """Ray resources (local cluster unless --address is given)."""

    address: str = ""
    num_cpus: int = 2
    """CPUs of the local cluster started when no address is given."""
    model_actor_cpus: float = 0.5
    """CPUs reserved by each model actor (captions, CLIP); fractional so tasks still get cores."""
    task_cpus: float = 1.0
    """CPUs reserved by each per-source and per-clip task. On nodes of 1 CPU use 0.5: a 1-CPU task
    cannot start on a node where a 0.5-CPU actor sits, and with an actor on every node the run
    waits forever (measured on a 1 + 1 CPU cluster)."""
    object_store_mb: int = 1024
    """Object store of the local cluster."""


STAGES = ("cuts", "motion", "text", "clip", "captions", "shards")


@dataclass
class CurateConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    cuts: CutConfig = field(default_factory=CutConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of the settings that change per-clip results; cached work is keyed on it.

        Filters, shards and Ray resources are left out: changing a threshold re-uses every score.
        """
        relevant = {name: value for name, value in self.to_dict().items() if name not in ("filters", "shards", "ray")}
        return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> None:
        """Raise ValueError naming the field for settings that cannot work."""
        if self.clip.enabled and not self.clip.model_path:
            raise ValueError("clip.model_path is required by the clip stage: set it to a local CLIP folder "
                             "(--set clip.model_path=DIR) or switch the stage off (--disable clip)")
        if self.clip.enabled and not self.captions.enabled:
            raise ValueError("the clip stage scores captions: enable captions or disable clip")
        for name in ("model_path", "aesthetic_head"):
            path = getattr(self.clip, name)
            if self.clip.enabled and path and not os.path.exists(path):
                raise ValueError(f"clip.{name}: {path} does not exist")
        if self.captions.strategy not in ("paper", "sharegpt4video"):
            raise ValueError(f"captions.strategy must be paper or sharegpt4video, not {self.captions.strategy!r}")
        if self.captions.backend not in ("trivial", "hf"):
            raise ValueError(f"captions.backend must be trivial or hf, not {self.captions.backend!r}")
        if self.captions.primary not in ("image", "video", "summary"):
            raise ValueError(f"captions.primary must be image, video or summary, not {self.captions.primary!r}")
        for name in ("motion_drop_lowest", "aesthetic_drop_lowest", "clip_score_drop_lowest", "text_area_drop_highest"):
            if not 0.0 <= getattr(self.filters, name) < 1.0:
                raise ValueError(f"filters.{name} must be in [0, 1), got {getattr(self.filters, name)}")
        if self.shards.clips_per_shard < 1:
            raise ValueError("shards.clips_per_shard must be at least 1")


def _apply(section: Any, values: dict, where: str) -> None:
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
        setattr(section, key, value)


def update_config(config: CurateConfig, values: dict, where: str) -> CurateConfig:
    """Apply {section: {field: value}} onto `config`; unknown names raise naming `where`."""
    for section_name, section_values in values.items():
        if section_name not in {f.name for f in dataclasses.fields(config)} or not isinstance(section_values, dict):
            raise ValueError(f"{where}: unknown section {section_name!r}")
        _apply(getattr(config, section_name), section_values, f"{where} [{section_name}]")
    return config


def load_config_file(path: str) -> dict:
    """Nested settings from a .json or .toml file."""
    if not os.path.isfile(path):
        raise ValueError(f"--config: {path} does not exist")
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as handle:
                return tomllib.load(handle)
        with open(path) as handle:
            return json.load(handle)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"--config: {path} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {error}")


def parse_assignment(text: str) -> dict:
    """'section.field=value' -> {section: {field: value}}; the value is JSON if it parses, else a string."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ValueError(f"--set {text!r}: expected section.field=value, e.g. filters.max_text_area=0.05")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return {section: {name: value}}
