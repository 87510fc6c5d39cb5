"""Stage 6: synthetic captions.

Two strategies over pluggable parts:

- "paper" (SVD, section 3.1): an image captioner on the middle frame (CoCa in the paper), a
  video captioner on frames spread over the clip (V-BLIP) and an LLM that merges the two.
- "sharegpt4video" (differential sliding window): caption the first frame in full, then for
  each following frame describe only what changed since the previous one (given the previous
  description), then let the LLM merge the time-stamped descriptions into one caption.

Each clip gets caption_image, caption_video and caption_summary; `caption` is the one chosen by
captions.primary (the paper's Elo study preferred CoCa's image captions). Parts:

- TrivialCaptioner: offline, from pixels only: brightness, dominant colours with their shares,
  camera pan/tilt/zoom or static with speed, and the share, direction and speed of subject
  motion; the default when no caption model is given.
- HFImageCaptioner / HFVideoCaptioner / HFTextGenerator: transformers models from local folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .config import CaptionConfig

# Flow (pixels between caption frames, on a 64 px short side) a pixel needs to count as moving;
# compression noise on still footage stays well below it.
STILL_FLOW = 1.0
# Camera motion (from the median flow) and subject motion (the rest) count from these speeds, in
# frame widths (or relative scale) per second: hand-held jitter and codec noise stay below.
CAMERA_SPEED = 0.03
ZOOM_RATE = 0.03
SUBJECT_SPEED = 0.05
MAX_FLOW_GAP = 1.5  # seconds between caption frames beyond which motion is not described
HUES = [(10, "red"), (22, "orange"), (34, "yellow"), (78, "green"), (100, "cyan"), (130, "blue"), (150, "purple"),
        (170, "pink"), (180, "red")]  # OpenCV hue (0..180) upper bounds


class ImageCaptioner(Protocol):
    def caption_image(self, image: np.ndarray) -> str: ...


class VideoCaptioner(Protocol):
    def caption_video(self, frames: np.ndarray, times: list[float] | None = None) -> str: ...


class ChangeDescriber(Protocol):
    def describe_change(self, before: np.ndarray, after: np.ndarray, previous: str) -> str: ...


class Summariser(Protocol):
    def summarise(self, captions: list[str]) -> str: ...


def colour_shares(image: np.ndarray) -> list[tuple[str, float]]:
    """Colour names with the share of pixels they cover, largest first. Low saturation is black,
    grey or white by brightness; otherwise the hue names it (dark oranges and reds are brown)."""
    small = cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    hue, saturation, value = hsv[:, 0], hsv[:, 1] / 255, hsv[:, 2] / 255
    names = np.empty(len(hsv), object)
    bounds = np.array([b for b, _ in HUES])
    names[:] = [HUES[int(np.searchsorted(bounds, h, side="right"))][1] if h < 180 else "red" for h in hue]
    brown = (value < 0.55) & np.isin(names, ["red", "orange"])
    names[brown] = "brown"
    grey = saturation < 0.25
    names[grey & (value < 0.2)] = "black"
    names[grey & (value >= 0.2) & (value < 0.8)] = "grey"
    names[grey & (value >= 0.8)] = "white"
    names[(value < 0.12)] = "black"
    found, counts = np.unique(names.astype(str), return_counts=True)
    order = np.argsort(-counts)
    return [(str(found[i]), float(counts[i] / len(names))) for i in order]


def dominant_colour(image: np.ndarray) -> str:
    """Name of the colour covering most pixels."""
    return colour_shares(image)[0][0]


def brightness(image: np.ndarray) -> str:
    level = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean()) / 255
    return "dark" if level < 0.2 else "dim" if level < 0.4 else "bright" if level > 0.65 else "evenly lit"


NAMED_COLOUR_SHARE = 0.15
"""colours covering at least this share of a frame are named in its caption (the two largest)"""


def describe_colours(image: np.ndarray) -> str:
    shares = [(name, share) for name, share in colour_shares(image) if share >= NAMED_COLOUR_SHARE][:2]
    return " and ".join(f"{name} ({round(100 * share)}%)" for name, share in shares)


def _grey_64(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = 64 / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)


def _texture_mask(grey: np.ndarray) -> np.ndarray:
    """Pixels whose local contrast is in the upper half of the frame's (flat ones tell no motion)."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    energy = cv2.GaussianBlur(gx * gx + gy * gy, (5, 5), 0).ravel()
    return energy >= np.median(energy)


@dataclass
class MotionSummary:
    camera: str  # "static camera", "camera pans left", "camera tilts up", "camera zooms in", ...
    camera_speed: float  # frame widths per second (pans) or relative scale per second (zooms)
    subject_share: float  # fraction of the frame moving on its own
    subject_direction: str  # "left", "right", "up", "down" or ""
    subject_speed: float  # frame widths per second


def describe_motion(frames: np.ndarray, times: list[float] | None = None) -> MotionSummary:
    """Camera and subject motion from Farneback flow between consecutive frames.

    The camera's part of each flow field is a translation plus a zoom about the centre, fitted
    robustly (medians); what is left over is motion of things in the scene.
    """
    times = list(times) if times is not None else list(range(len(frames)))
    grey = [_grey_64(f) for f in frames]
    if len(grey) < 2:
        return MotionSummary("static camera", 0.0, 0.0, "", 0.0)
    height, width = grey[0].shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    offset = np.stack([xs - width / 2, ys - height / 2], -1).reshape(-1, 2)
    radius2 = (offset ** 2).sum(1)
    outer = radius2 > (0.2 * width) ** 2
    pans, zooms, residuals, durations = [], [], [], []
    for a, b, t0, t1 in zip(grey, grey[1:], times, times[1:]):
        dt = max(1e-3, t1 - t0)
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0).reshape(-1, 2)
        # Flat areas (sky, road) show no flow whichever way the camera turns: only textured
        # pixels vote for the camera's motion.
        textured = _texture_mask(a)
        shift = np.median(flow[textured], 0)
        ring = outer & textured
        zoom = float(np.median(((flow - shift) * offset).sum(1)[ring] / radius2[ring])) if ring.any() else 0.0
        residual = flow - shift - zoom * offset
        pans.append(shift / width / dt)
        zooms.append(zoom / dt)
        residuals.append(residual / width / dt)
        durations.append(dt)
    # Medians over the frame pairs: one pair filled by a passing car does not move the camera.
    pan = np.median(pans, 0)
    zoom = float(np.median(zooms))
    camera, speed = "static camera", 0.0
    if abs(zoom) >= ZOOM_RATE and abs(zoom) >= np.abs(pan).max():
        camera, speed = ("camera zooms in" if zoom > 0 else "camera zooms out"), abs(zoom)
    elif np.abs(pan).max() >= CAMERA_SPEED:
        # The picture moving right means the camera turns left.
        if abs(pan[0]) >= abs(pan[1]):
            camera = "camera pans left" if pan[0] > 0 else "camera pans right"
        else:
            camera = "camera tilts up" if pan[1] > 0 else "camera tilts down"
        speed = float(np.abs(pan).max())
    residual = np.concatenate(residuals)
    moving = residual[np.linalg.norm(residual, axis=1) >= SUBJECT_SPEED]
    share = len(moving) / len(residual)
    direction, subject_speed = "", 0.0
    if share >= 0.01:
        dx, dy = moving.mean(0)
        direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
        subject_speed = float(np.linalg.norm(moving, axis=1).mean())
    return MotionSummary(camera, speed, share, direction, subject_speed)


def motion_direction(frames: np.ndarray) -> str:
    """'still' or 'moving left/right/up/down' from the mean Farneback flow of the moving pixels."""
    grey = [_grey_64(frame) for frame in frames]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0) for a, b in zip(grey, grey[1:])]
    if not flows:
        return "still"
    flow = np.stack(flows).reshape(-1, 2)
    moving = flow[np.linalg.norm(flow, axis=1) > STILL_FLOW]
    # Most of the frame may be still background: only a visible share of moving pixels counts.
    if len(moving) < 0.01 * len(flow):
        return "still"
    dx, dy = moving.mean(axis=0)
    if abs(dx) >= abs(dy):
        return "moving right" if dx > 0 else "moving left"
    return "moving down" if dy > 0 else "moving up"


class TrivialCaptioner:
    """Offline captions from pixels alone, every word checkable: brightness, the colours covering
    at least 15% of the frame with their shares, camera motion (static, pan, tilt, zoom, with
    speed) and how much of the frame moves on its own, which way and how fast."""

    def caption_image(self, image: np.ndarray) -> str:
        light = brightness(image)
        return f"{'an' if light[0] in 'aeiou' else 'a'} {light} scene, mostly {describe_colours(image)}"

    def caption_video(self, frames: np.ndarray, times: list[float] | None = None) -> str:
        parts = [self.caption_image(frames[len(frames) // 2])]
        gap = float(np.median(np.diff(times))) if times is not None and len(times) > 1 else 0.0
        if gap > MAX_FLOW_GAP:
            # Optical flow cannot follow things between frames this far apart: say so, not "still".
            parts.append(f"motion not measured (caption frames {gap:.1f} s apart)")
            return "; ".join(parts)
        motion = describe_motion(frames, times)
        if motion.camera == "static camera":
            parts.append("static camera")
        else:
            unit = "scale" if "zoom" in motion.camera else "frame widths"
            parts.append(f"{motion.camera} at {motion.camera_speed:.2f} {unit}/s")
        if motion.subject_direction:
            parts.append(f"motion in {round(100 * motion.subject_share)}% of the frame, mostly {motion.subject_direction}"
                         f" at {motion.subject_speed:.2f} frame widths/s")
        else:
            parts.append("nothing moves on its own")
        return "; ".join(parts)

    def describe_change(self, before: np.ndarray, after: np.ndarray, previous: str) -> str:
        old, new = dominant_colour(before), dominant_colour(after)
        if old != new:
            return f"the scene turns from {old} to {new}"
        movement = motion_direction(np.stack([before, after]))
        return "nothing changes" if movement == "still" else f"the content keeps {movement}"

    def summarise(self, captions: list[str]) -> str:
        unique = list(dict.fromkeys(c.split(": ", 1)[-1] for c in captions if c))
        return "; ".join(unique)


def _load(kind: str, path: str, auto_model):
    """(processor or tokenizer, model) from a local folder, with an error naming the setting."""
    from transformers import AutoProcessor, AutoTokenizer

    loader = AutoTokenizer if kind == "summary_model" else AutoProcessor
    try:
        return (loader.from_pretrained(path, local_files_only=True),
                auto_model.from_pretrained(path, local_files_only=True).eval())
    except (OSError, ValueError) as error:
        raise ValueError(f"captions.{kind}: cannot load a model from {path}: {error}") from None


class HFImageCaptioner:
    """Image-to-text model (BLIP, BLIP-2, GIT, ...) from a local folder, greedy decoding."""

    def __init__(self, path: str, max_new_tokens: int = 40):
        import torch
        from transformers import AutoModelForImageTextToText

        self.torch = torch
        self.processor, self.model = _load("image_model", path, AutoModelForImageTextToText)
        self.max_new_tokens = max_new_tokens

    def caption_image(self, image: np.ndarray) -> str:
        with self.torch.inference_mode():
            inputs = self.processor(images=image, return_tensors="pt")
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()


class HFVideoCaptioner:
    """GIT-style video captioner: the frames go in together as pixel_values (1, T, C, H, W)."""

    def __init__(self, path: str, max_new_tokens: int = 40):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.processor, self.model = _load("video_model", path, AutoModelForCausalLM)
        if self.model.config.model_type != "git":
            raise ValueError(f"captions.video_model: {path} is a {self.model.config.model_type} model; the video "
                             "captioner takes GIT video models (e.g. microsoft/git-base-vatex)")
        self.num_frames = self.model.config.num_image_with_embedding or None
        self.max_new_tokens = max_new_tokens

    def caption_video(self, frames: np.ndarray, times: list[float] | None = None) -> str:
        if self.num_frames:
            # The model learned one temporal embedding per frame slot: give it exactly that many.
            frames = frames[np.linspace(0, len(frames) - 1, self.num_frames).round().astype(int)]
        with self.torch.inference_mode():
            pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"][None]
            tokens = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()


class HFTextGenerator:
    """Causal LM from a local folder that continues a prompt (greedy); the summary step."""

    SUMMARY_PROMPT = ("Merge these descriptions of one video clip into a single short caption.\n"
                      "{lines}\nCaption:")
    CHANGE_PROMPT = ("Earlier frame: {before}\nLater frame: {after}\nPrevious description: {previous}\n"
                     "In one sentence, what changed between the frames?")

    def __init__(self, path: str, max_new_tokens: int = 40):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.tokenizer, self.model = _load("summary_model", path, AutoModelForCausalLM)
        self.max_new_tokens = max_new_tokens

    def generate(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                        add_generation_prompt=True)
        inputs = self.tokenizer(prompt, return_tensors="pt")
        with self.torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def summarise(self, captions: list[str]) -> str:
        return self.generate(self.SUMMARY_PROMPT.format(lines="\n".join(f"- {c}" for c in captions)))


@dataclass
class LLMChangeDescriber:
    """Differential caption from an image captioner and an LLM: caption both frames, ask what changed."""

    captioner: ImageCaptioner
    llm: HFTextGenerator

    def describe_change(self, before: np.ndarray, after: np.ndarray, previous: str) -> str:
        return self.llm.generate(self.llm.CHANGE_PROMPT.format(
            before=self.captioner.caption_image(before), after=self.captioner.caption_image(after), previous=previous))


@dataclass
class Captioner:
    """One caption strategy with its parts; `captions` runs it on one clip."""

    strategy: str
    image: ImageCaptioner
    video: VideoCaptioner
    change: ChangeDescriber
    summary: Summariser
    primary: str = "image"

    def captions(self, key_frames: np.ndarray, caption_frames: np.ndarray, times: list[float]) -> dict[str, str]:
        """key_frames: first/middle/last; caption_frames: spread over the clip at `times` seconds."""
        if self.strategy == "paper":
            image = self.image.caption_image(key_frames[1])
            video = self.video.caption_video(caption_frames, times)
            summary = self.summary.summarise([image, video])
        else:
            image = self.image.caption_image(caption_frames[0])
            steps = [f"{times[0]:.1f}s: {image}"]
            previous = image
            for index in range(1, len(caption_frames)):
                previous = self.change.describe_change(caption_frames[index - 1], caption_frames[index], previous)
                steps.append(f"{times[index]:.1f}s: {previous}")
            video = "\n".join(steps)
            summary = self.summary.summarise(steps)
        result = {"caption_image": image, "caption_video": video, "caption_summary": summary}
        result["caption"] = result[f"caption_{self.primary}"]
        return result


def build_captioner(config: CaptionConfig) -> Captioner:
    """Captioner for the configured strategy and backend (models load here, once per worker)."""
    if config.backend == "trivial":
        trivial = TrivialCaptioner()
        return Captioner(config.strategy, trivial, trivial, trivial, trivial, config.primary)
    needed = {"image_model": config.image_model, "summary_model": config.summary_model}
    if config.strategy == "paper":
        needed["video_model"] = config.video_model
    missing = [f"captions.{name}" for name, path in needed.items() if not path]
    if missing:
        raise ValueError(f"captions.backend=hf with strategy {config.strategy} needs {', '.join(missing)}")
    image = HFImageCaptioner(config.image_model, config.max_new_tokens)
    llm = HFTextGenerator(config.summary_model, config.max_new_tokens)
    video = HFVideoCaptioner(config.video_model, config.max_new_tokens) if config.strategy == "paper" else None
    return Captioner(config.strategy, image, video, LLMChangeDescriber(image, llm), llm, config.primary)
