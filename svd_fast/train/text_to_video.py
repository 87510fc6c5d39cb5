"""Text-to-video training pieces: caption attributes, a small tokenizer, a tiny CLIP text tower.

- `clip_attributes(frames, fps)`: the colour and camera motion of a clip as the curation pipeline's
  built-in captioner (svd_fast.curate.captions.TrivialCaptioner) measures them: the dominant colour
  of the middle frame and the camera class of `describe_motion`. `caption_attributes(caption)`
  reads the same two attributes back from a caption that captioner wrote, so a prompt's target
  attributes and a generated clip's measured ones come from one extractor.
- `build_tokenizer(captions)`: a word-level tokenizer (lower-cased words, punctuation and single
  digits) built from the captions with `tokenizers`, wrapped as a transformers
  PreTrainedTokenizerFast: it saves and loads like any transformers tokenizer, so a real CLIP
  tokenizer folder is a drop-in replacement in the pipeline.
- `text_tower_config(...)`: transformers CLIPTextConfig of the tiny tower; `train_text_tower`
  trains it contrastively (CLIP's symmetric InfoNCE) against a frozen CLIP image tower's embeddings
  of the clips' middle frames.
"""
from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F

from svd_fast.camera_start import CAMERA_WORDS
from svd_fast.curate.captions import describe_motion, dominant_colour

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
CAMERAS = ("static camera", *CAMERA_WORDS)
"""the camera classes describe_motion reports (the captioner's words)"""


def clip_attributes(frames: np.ndarray, fps: float) -> dict[str, str]:
    """{'colour', 'camera'} of uint8 frames (T, H, W, 3) played at `fps`, measured as the captioner does."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clip_attributes: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    times = [t / fps for t in range(len(frames))]
    return {"colour": dominant_colour(frames[len(frames) // 2]), "camera": describe_motion(frames, times).camera}


_COLOUR = re.compile(r"mostly (\w+)")


def caption_attributes(caption: str) -> dict[str, str]:
    """{'colour', 'camera'} as written in a TrivialCaptioner video caption."""
    colour = _COLOUR.search(caption)
    camera = next((c for c in CAMERAS if c in caption), None)
    if colour is None or camera is None:
        raise ValueError(f"caption_attributes: not a captioner video caption: {caption!r}")
    return {"colour": colour.group(1), "camera": camera}


def build_tokenizer(captions: list[str], max_length: int):
    """Word-level tokenizer over the captions' words (+ the 10 digits), as PreTrainedTokenizerFast.

    Sequences are <|startoftext|> words <|endoftext|>, padded with <pad> to max_length (CLIP's
    layout: the text tower pools at the first <|endoftext|>)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    words: dict[str, int] = {}
    for caption in captions:
        for word, _ in pre.pre_tokenize_str(caption.lower()):
            words[word] = words.get(word, 0) + 1
    vocab = {token: i for i, token in enumerate([PAD, UNK, BOS, EOS, *map(str, range(10)), *sorted(set(words) - set(map(str, range(10))))])}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   model_max_length=max_length)


def text_tower_config(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 2, projection_dim: int = 64):
    """transformers CLIPTextConfig of a tiny text tower for this tokenizer (exact GELU, as OpenCLIP)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=layers, num_attention_heads=heads, projection_dim=projection_dim,
                          max_position_embeddings=tokenizer.model_max_length, hidden_act="gelu",
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)


def train_text_tower(model, tokenizer, captions: list[str], image_embeds: torch.Tensor, steps: int, batch: int = 64,
                     lr: float = 2e-3, seed: int = 0, log=None) -> list[float]:
    """CLIP contrastive training of `model` (CLIPTextModelWithProjection) against fixed image
    embeddings (N, D) of the clips the captions describe; returns the loss per step.

    Captions that are identical (several clips described the same way) are not negatives of each
    other: the targets spread over every identical caption in the batch."""
    gen = torch.Generator().manual_seed(seed)
    images = F.normalize(image_embeds.float(), dim=-1)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")["input_ids"]
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW([*model.parameters(), logit_scale], lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    for step in range(steps):
        pick = torch.randperm(len(captions), generator=gen)[:batch]
        text = F.normalize(model(input_ids=ids[pick]).text_embeds, dim=-1)
        logits = logit_scale.exp().clamp(max=100) * text @ images[pick].T
        same = (ids[pick][:, None, :] == ids[pick][None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True))) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"text tower step {step}: contrastive loss {loss.item():.3f}")
    model.eval()
    return losses
