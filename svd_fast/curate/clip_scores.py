"""Stage 5: CLIP image embeddings of the first/middle/last frame, caption similarity, aesthetics.

- clip_score: cosine similarity between the caption's CLIP text embedding and each frame's
  image embedding, averaged over the three frames (the paper's text-image score);
- aesthetic: a pluggable head (one linear layer or an MLP, loaded from safetensors) applied to
  each frame's L2-normalised image embedding, averaged over the frames. The LAION aesthetic
  predictor is such an MLP (linear layers without activations) over CLIP ViT-L/14 embeddings.

Models load from local folders only (transformers CLIPModel + CLIPProcessor); nothing is
downloaded. Each clip is scored in its own forward pass so a score never depends on which other
clips shared a batch (a resumed run reproduces the uninterrupted one bit for bit).
"""
from __future__ import annotations

import re

import numpy as np
import torch
from safetensors.torch import load_file

ACTIVATIONS = {"none": torch.nn.Identity, "relu": torch.nn.ReLU, "gelu": torch.nn.GELU}


def load_aesthetic_head(path: str, activation: str = "none") -> torch.nn.Sequential:
    """Linear layers from a safetensors file, applied in the order of the numbers in their names.

    Any naming with one number per layer works: 'layers.0.weight', 'layers.2.weight', ... (the
    LAION MLP) or a single 'weight'/'bias' pair (a linear probe). Each weight is (out, in).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"clip.aesthetic_activation: {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    tensors = load_file(path)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        kind = name.rsplit(".", 1)[-1]
        if kind not in ("weight", "bias"):
            raise ValueError(f"{path}: unexpected tensor {name!r} (expected *.weight / *.bias of linear layers)")
        numbers = re.findall(r"\d+", name)
        layers.setdefault(int(numbers[-1]) if numbers else 0, {})[kind] = tensor.float()
    modules: list[torch.nn.Module] = []
    expected_in = None
    for position, index in enumerate(sorted(layers)):
        params = layers[index]
        if "weight" not in params or params["weight"].ndim != 2:
            raise ValueError(f"{path}: layer {index} needs a 2-D weight")
        out_features, in_features = params["weight"].shape
        if expected_in is not None and in_features != expected_in:
            raise ValueError(f"{path}: layer {index} takes {in_features} inputs but the previous layer gives {expected_in}")
        linear = torch.nn.Linear(in_features, out_features, bias="bias" in params)
        with torch.no_grad():
            linear.weight.copy_(params["weight"])
            if "bias" in params:
                linear.bias.copy_(params["bias"])
        if position:
            modules.append(ACTIVATIONS[activation]())
        modules.append(linear)
        expected_in = out_features
    if expected_in != 1:
        raise ValueError(f"{path}: the last layer must output one score, it outputs {expected_in}")
    return torch.nn.Sequential(*modules).eval()


class ClipScorer:
    """CLIP embeddings and the two scores for one clip at a time."""

    def __init__(self, model_path: str, aesthetic_head: str = "", activation: str = "none", threads: int = 1):
        from transformers import CLIPModel, CLIPProcessor

        torch.set_num_threads(max(1, threads))
        try:
            self.model = CLIPModel.from_pretrained(model_path, local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(model_path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"clip.model_path: cannot load a CLIP model and processor from {model_path}: {error}") from None
        self.head = load_aesthetic_head(aesthetic_head, activation) if aesthetic_head else None
        dim = self.model.config.projection_dim
        if self.head is not None and self.head[0].in_features != dim:
            raise ValueError(f"clip.aesthetic_head: {aesthetic_head} expects {self.head[0].in_features}-d "
                             f"embeddings but the CLIP model gives {dim}-d")
        self.max_tokens = self.model.config.text_config.max_position_embeddings

    @torch.inference_mode()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """L2-normalised image embeddings (F, D) of RGB uint8 frames (F, H, W, 3)."""
        pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"]
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(pooled), dim=-1)

    @torch.inference_mode()
    def text_embedding(self, text: str) -> torch.Tensor:
        """L2-normalised text embedding (D,), the caption truncated to CLIP's context length."""
        tokens = self.processor(text=[text], return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_tokens)
        pooled = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(pooled), dim=-1)[0]

    @torch.inference_mode()
    def score(self, frames: np.ndarray, caption: str) -> dict[str, float]:
        images = self.image_embeddings(frames)
        scores = {"clip_score": float((images @ self.text_embedding(caption)).mean()) if caption else float("nan"),
                  "aesthetic": float("nan")}
        if self.head is not None:
            scores["aesthetic"] = float(self.head(images).mean())
        return scores
