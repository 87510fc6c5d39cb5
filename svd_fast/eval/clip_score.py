"""CLIP score of a video against its prompt, with any local transformers CLIP model.

The usual definition (torchmetrics' CLIPScore, the T2V papers' CLIPSIM): per frame
100 * max(cos(image embedding, text embedding), 0), averaged over the frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ClipScorer:
    """A CLIPModel and its processor from one folder (`save_pretrained` of both)."""

    def __init__(self, folder, device="cpu"):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"CLIP folder not found: {folder}")
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(folder).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot load a CLIPModel + CLIPProcessor from {folder}: {first}") from err
        self.device = torch.device(device)

    @torch.no_grad()
    def frame_scores(self, frames: np.ndarray, prompts: list[str]) -> np.ndarray:
        """(T, P): 100 * max(cos, 0) of each frame (T, H, W, 3 uint8) with each prompt."""
        inputs = self.processor(text=list(prompts), images=list(frames), return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        image = _tensor(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
        text = _tensor(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                    attention_mask=inputs.get("attention_mask")))
        cos = torch.nn.functional.normalize(image.float(), dim=-1) @ torch.nn.functional.normalize(text.float(), dim=-1).T
        return (100 * cos.clamp(min=0)).double().cpu().numpy()

    def scores(self, frames: np.ndarray, prompts: list[str]) -> np.ndarray:
        """CLIP score of the video with each prompt (P,)."""
        return self.frame_scores(frames, prompts).mean(0)

    def __call__(self, frames: np.ndarray, prompt: str) -> float:
        return float(self.scores(frames, [prompt])[0])


def _tensor(output) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding;
    earlier versions return the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
