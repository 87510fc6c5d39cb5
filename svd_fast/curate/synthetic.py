"""Synthetic videos with known ground truth, for the curation tests and bench/curate.py.

Each video is a list of scenes. A scene is a textured background with a square that is either
still or moving, optionally with dark text overlaid; it starts with a hard cut or a cross-fade
from the previous scene. The renderer returns where every transition is (in frames), which
clips are moving and how much of the frame the text covers, so tests can score the pipeline
against truth they generated themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from .video import encode_mp4

# Saturated but never pure red: hue wraps around 0 under noise and confuses HSV detectors.
PALETTE = {
    "blue": (40, 70, 200),
    "green": (50, 170, 60),
    "yellow": (220, 200, 40),
    "purple": (130, 50, 170),
    "orange": (230, 130, 30),
    "cyan": (40, 190, 200),
    "white": (225, 225, 225),
    "grey": (120, 120, 120),
}
TEXT_COLOUR = (20, 20, 20)
TEXT_FONT = cv2.FONT_HERSHEY_DUPLEX


@dataclass(frozen=True)
class Scene:
    frames: int  # frames shown without blending (the fade-in frames come on top)
    background: str  # a PALETTE name
    square: str  # a PALETTE name
    velocity: tuple[float, float] = (0.0, 0.0)  # the square's motion, pixels per frame (x, y)
    text: str = ""  # words drawn in dark ink near the top left
    text_scale: float = 1.0  # cv2 font scale of the text
    fade_in: int = 0  # cross-fade frames from the previous scene (0: a hard cut)


@dataclass
class TruthClip:
    start: int  # first frame of the scene's unblended part
    end: int  # one past its last frame
    moving: bool
    text_area: float  # fraction of the frame covered by the text's word boxes


@dataclass
class SyntheticVideo:
    path: str
    fps: float
    width: int
    height: int
    num_frames: int
    transitions: list[tuple[int, int]] = field(default_factory=list)  # (first blended, first clean)
    clips: list[TruthClip] = field(default_factory=list)


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth random texture in [-25, 25], so frames are not flat (flow needs structure)."""
    coarse = rng.uniform(-25, 25, size=(max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _word_layout(text: str, scale: float, origin: tuple[int, int]) -> list[tuple[str, int, int]]:
    """(word, x, baseline y) for each word, advancing by the word width plus one space."""
    space = cv2.getTextSize(" ", TEXT_FONT, scale, 2)[0][0]
    x, y = origin
    layout = []
    for word in text.split():
        layout.append((word, x, y))
        x += cv2.getTextSize(word, TEXT_FONT, scale, 2)[0][0] + space
    return layout


def _draw_text(image: np.ndarray, layout: list[tuple[str, int, int]], scale: float) -> None:
    for word, x, y in layout:
        cv2.putText(image, word, (x, y), TEXT_FONT, scale, TEXT_COLOUR, 2, cv2.LINE_AA)


def text_box_fraction(layout: list[tuple[str, int, int]], scale: float, width: int, height: int) -> float:
    """Ground truth: union of the tight ink boxes of each word, as a fraction of the frame."""
    covered = np.zeros((height, width), bool)
    for word, x, y in layout:
        ink = np.zeros((height, width), np.uint8)
        cv2.putText(ink, word, (x, y), TEXT_FONT, scale, 255, 2, cv2.LINE_AA)
        rows, cols = np.nonzero(ink > 127)
        if rows.size:
            covered[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1] = True
    return float(covered.mean())


def _bounce(position: float, limit: int) -> int:
    """Position reflected into [0, limit]: the square bounces off the edges (no jumps)."""
    period = 2 * limit
    folded = position % period
    return int(round(folded if folded <= limit else period - folded))


class _SceneRenderer:
    """Draws frame t (local time) of one scene."""

    def __init__(self, scene: Scene, width: int, height: int, rng: np.random.Generator):
        self.scene, self.width, self.height = scene, width, height
        texture = _texture(rng, width, height)
        self.base = np.clip(np.array(PALETTE[scene.background], np.float32) + texture, 0, 255).astype(np.uint8)
        self.side = max(4, min(width, height) // 4)
        # Moving squares start on the side they move away from (so they travel before bouncing);
        # still ones sit bottom right, away from the text.
        if any(scene.velocity):
            vx, vy = scene.velocity
            self.origin = np.array([width * 0.1 if vx >= 0 else width * 0.9 - self.side,
                                    height * 0.45 if vy >= 0 else height - self.side - 1])
        else:
            self.origin = np.array([width - 1.5 * self.side, height - 1.5 * self.side])
        self.square_colour = np.array(PALETTE[scene.square], np.uint8)
        self.text_layout = _word_layout(scene.text, scene.text_scale, (4, int(height * 0.3))) if scene.text else []

    def frame(self, t: int) -> np.ndarray:
        image = self.base.copy()
        x, y = self.origin + np.array(self.scene.velocity) * t
        x, y = _bounce(x, self.width - self.side), _bounce(y, self.height - self.side)
        image[y: y + self.side, x: x + self.side] = self.square_colour
        if self.text_layout:
            _draw_text(image, self.text_layout, self.scene.text_scale)
        return image.astype(np.float32)

    def text_area(self) -> float:
        if not self.text_layout:
            return 0.0
        return text_box_fraction(self.text_layout, self.scene.text_scale, self.width, self.height)


def render_video(path: str, scenes: list[Scene], fps: float = 12.0, width: int = 96, height: int = 64,
                 seed: int = 0, gop: int | None = None, noise: float = 2.0) -> SyntheticVideo:
    """Render `scenes` to an H.264 mp4 at `path` and return its ground truth."""
    rng = np.random.default_rng(seed)
    renderers = [_SceneRenderer(scene, width, height, rng) for scene in scenes]
    frames: list[np.ndarray] = []
    truth = SyntheticVideo(path, fps, width, height, 0)
    for index, (scene, renderer) in enumerate(zip(scenes, renderers)):
        fade = scene.fade_in if index else 0
        if index:
            truth.transitions.append((len(frames), len(frames) + fade))
        if fade:
            # The previous scene keeps moving under the fade: its local time continues.
            previous = renderers[index - 1]
            previous_t = (scenes[index - 1].fade_in if index > 1 else 0) + len(frames) - truth.clips[-1].start
        for k in range(fade):
            alpha = (k + 1) / (fade + 1)
            frames.append((1 - alpha) * previous.frame(previous_t + k) + alpha * renderer.frame(k))
        start = len(frames)
        frames.extend(renderer.frame(fade + t) for t in range(scene.frames))
        truth.clips.append(TruthClip(start, len(frames), any(scene.velocity), renderer.text_area()))
    noisy = [np.clip(f + rng.normal(0, noise, f.shape), 0, 255).astype(np.uint8) for f in frames]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(encode_mp4(noisy, fps, crf=12, gop=gop))
    truth.num_frames = len(frames)
    return truth


def write_broken_inputs(folder: str) -> dict[str, str]:
    """Files that must be recorded as errors, never crash a run: {file name: what is wrong}."""
    import av

    os.makedirs(folder, exist_ok=True)
    broken = {
        "empty.mp4": b"",
        "garbage.mp4": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }
    for name, payload in broken.items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(payload)
    with av.open(os.path.join(folder, "audio_only.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    # A real video cut short: the index (moov atom) at its end is missing.
    whole = encode_mp4([np.full((32, 32, 3), 128, np.uint8)] * 12, 12.0)
    with open(os.path.join(folder, "truncated.mp4"), "wb") as handle:
        handle.write(whole[: len(whole) // 2])
    return {"empty.mp4": "empty file", "garbage.mp4": "unreadable", "audio_only.mp4": "no video stream",
            "truncated.mp4": "unreadable"}


# --- transitions between real shots ------------------------------------------------------------

TRANSITION_KINDS = ("cut", "dissolve", "fade", "wipe")


def fit_frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre crop to the aspect ratio of (width, height), then area-resize: shots from videos of
    any size share one frame size."""
    h, w = image.shape[:2]
    target = width / height
    if w / h > target:
        crop = int(round(h * target))
        image = image[:, (w - crop) // 2: (w - crop) // 2 + crop]
    else:
        crop = int(round(w / target))
        image = image[(h - crop) // 2: (h - crop) // 2 + crop]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _transition_frame(kind: str, a: np.ndarray, b: np.ndarray, k: int, length: int) -> np.ndarray:
    """Frame k (0-based) of a `length`-frame transition from shot frame a to shot frame b."""
    progress = (k + 1) / (length + 1)
    if kind == "dissolve":
        return (1 - progress) * a + progress * b
    if kind == "fade":
        # Out to black over the first half, in from black over the second (black at the middle).
        half = length / 2
        return a * max(0.0, 1 - (k + 1) / (half + 0.5)) if k < half else b * min(1.0, (k + 1 - half) / (half + 0.5))
    if kind == "wipe":
        edge = int(round(progress * a.shape[1]))
        out = a.copy()
        out[:, :edge] = b[:, :edge]
        return out
    raise ValueError(f"unknown transition kind {kind!r}")


def render_shot_transitions(path: str, shots: list[np.ndarray], plan: list[tuple[str, int]], fps: float = 25.0,
                            crf: int = 23, fade_in: int = 0) -> list[tuple[int, int, str]]:
    """Join real shots (each (T, H, W, 3) uint8, same size) with the transitions in `plan`
    ([(kind, frames)] between consecutive shots; a cut has 0 frames) and encode an mp4.

    Shots keep playing under a transition: the old shot's frames continue while the new one's
    start. `fade_in` frames fade the first shot in from black. Returns the exact truth:
    [(first transition frame, first frame of the new shot, kind)].
    """
    assert len(plan) == len(shots) - 1
    frames: list[np.ndarray] = []
    truth: list[tuple[int, int, str]] = []
    if fade_in:
        truth.append((0, fade_in, "fade"))
    position = 0  # frames of the current shot already shown
    for index, shot in enumerate(shots):
        shot = shot.astype(np.float32)
        if index == 0 and fade_in:
            frames += [shot[k] * (k + 1) / (fade_in + 1) for k in range(fade_in)]
            position = fade_in
        kind, length = plan[index] if index < len(plan) else ("end", 0)
        clean_end = len(shot) - length if index < len(plan) else len(shot)
        frames += list(shot[position: clean_end])
        if index < len(plan):
            start = len(frames)
            following = shots[index + 1].astype(np.float32)
            frames += [_transition_frame(kind, shot[clean_end + k], following[k], k, length) for k in range(length)]
            truth.append((start, start + length, kind))
            position = length
    images = [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in frames]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(encode_mp4(images, fps, crf=crf))
    return truth
