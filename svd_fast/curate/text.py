"""Stage 4: how much of the frame is covered by text (subtitles, logos, captions burnt in).

The paper ran the CRAFT detector on the first, middle and last frame. The detector is
pluggable: anything with `boxes(image) -> [(x0, y0, x1, y1), ...]` can be registered in
DETECTORS under a name and chosen with `--set text.detector=NAME`. The default uses tesseract
word boxes. The score is the union of the boxes as a fraction of the frame, averaged over the
three frames.
"""
from __future__ import annotations

from typing import Callable, Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


class TextDetector(Protocol):
    def boxes(self, image: np.ndarray) -> list[Box]:
        """Text boxes in an RGB uint8 image."""


class TesseractDetector:
    """Word boxes from tesseract with its automatic page segmentation (the sparse-text mode, psm 11,
    also reads textured background patches as letters)."""

    def __init__(self, min_confidence: float = 50.0):
        import pytesseract

        self.pytesseract = pytesseract
        self.min_confidence = min_confidence
        try:
            pytesseract.get_tesseract_version()
        except pytesseract.TesseractNotFoundError:
            raise RuntimeError("text stage: the tesseract binary is not installed "
                               "(apt-get install tesseract-ocr tesseract-ocr-eng) - or --disable text") from None

    def boxes(self, image: np.ndarray) -> list[Box]:
        data = self.pytesseract.image_to_data(image, output_type=self.pytesseract.Output.DICT)
        found = []
        for word, confidence, x, y, w, h in zip(data["text"], data["conf"], data["left"], data["top"],
                                                data["width"], data["height"]):
            # Blank "words" and lone punctuation are tesseract reading texture as text.
            if float(confidence) >= self.min_confidence and any(c.isalnum() for c in word):
                found.append((x, y, x + w, y + h))
        return found


DETECTORS: dict[str, Callable[..., TextDetector]] = {"tesseract": TesseractDetector}


def make_detector(name: str, min_confidence: float) -> TextDetector:
    if name not in DETECTORS:
        raise ValueError(f"text.detector: unknown detector {name!r} (registered: {', '.join(sorted(DETECTORS))})")
    return DETECTORS[name](min_confidence=min_confidence)


def box_fraction(boxes: list[Box], width: int, height: int) -> float:
    """Union area of `boxes` over the frame area (overlapping boxes count once)."""
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        covered[max(0, y0): max(0, y1), max(0, x0): max(0, x1)] = True
    return float(covered.mean())


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize (up or down) so the short side is `short_side`; OCR needs glyphs tens of pixels tall."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    if abs(scale - 1.0) < 1e-6:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)


def text_area(frames: np.ndarray, detector: TextDetector, ocr_short_side: int) -> float:
    """Mean text-box fraction over (3, H, W, 3) RGB frames (first, middle, last)."""
    fractions = []
    for frame in frames:
        image = resize_short_side(frame, ocr_short_side)
        fractions.append(box_fraction(detector.boxes(image), image.shape[1], image.shape[0]))
    return float(np.mean(fractions))
