"""Stage 6: synthetic captions.

Two strategies over pluggable parts:

- "paper" (SVD, section 3.1): an image captioner on the middle frame (CoCa in the paper), a
  video captioner on frames spread over the clip (V-BLIP) and an LLM that merges the two.
- "sharegpt4video" (differential sliding window): caption the first frame in full, then for
  each following frame describe only what changed since the previous one (given the previous
  description), then let the LLM merge the time-stamped descriptions into one caption.

Each clip gets caption_image, caption_video and caption_summary; `caption` is the one chosen by
captions.primary (the paper's Elo study preferred CoCa's image captions). Parts:

- TrivialCaptioner: offline, from pixels only (dominant colour name, direction of motion); used
  by tests and as a cheap default.
- HFImageCaptioner / HFVideoCaptioner / HFTextGenerator: transformers models from local folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .config import CaptionConfig

# Named colours for the trivial captioner (RGB); the nearest one names each pixel.
COLOUR_NAMES = {
    "black": (20, 20, 20), "white": (235, 235, 235), "grey": (128, 128, 128), "red": (200, 30, 30),
    "orange": (230, 130, 30), "yellow": (225, 205, 40), "green": (50, 170, 60), "cyan": (40, 190, 200),
    "blue": (40, 70, 200), "purple": (130, 50, 170), "pink": (230, 130, 180), "brown": (120, 70, 30),
}
# Flow (pixels between caption frames, on a 64 px short side) a pixel needs to count as moving;
# compression noise on still footage stays well below it.
STILL_FLOW = 1.0


class ImageCaptioner(Protocol):
    def caption_image(self, image: np.ndarray) -> str: ...


class VideoCaptioner(Protocol):
    def caption_video(self, frames: np.ndarray) -> str: ...


class ChangeDescriber(Protocol):
    def describe_change(self, before: np.ndarray, after: np.ndarray, previous: str) -> str: ...


class Summariser(Protocol):
    def summarise(self, captions: list[str]) -> str: ...


def dominant_colour(image: np.ndarray) -> str:
    """Name of the named colour closest to the most pixels."""
    names = list(COLOUR_NAMES)
    palette = np.asarray([COLOUR_NAMES[n] for n in names], np.float32)
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).reshape(-1, 1, 3).astype(np.float32)
    nearest = np.argmin(((small - palette[None]) ** 2).sum(-1), axis=1)
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


def motion_direction(frames: np.ndarray) -> str:
    """'still' or 'moving left/right/up/down' from the mean Farneback flow of the moving pixels."""
    grey = []
    for frame in frames:
        height, width = frame.shape[:2]
        scale = 64 / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey.append(cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY))
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
    """Offline captions from pixels alone: dominant colour and direction of motion."""

    def caption_image(self, image: np.ndarray) -> str:
        return f"a {dominant_colour(image)} scene"

    def caption_video(self, frames: np.ndarray) -> str:
        return f"a {dominant_colour(frames[len(frames) // 2])} scene, {motion_direction(frames)}"

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

    def caption_video(self, frames: np.ndarray) -> str:
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
            video = self.video.caption_video(caption_frames)
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
