"""The CLIP text tower and tokenizer of a text-to-video model (SVDConfig.conditioning == "text") in
both checkpoint layouts.

diffusers folder: `text_encoder/` (a transformers CLIPTextModel or CLIPTextModelWithProjection:
config.json + model.safetensors) and `tokenizer/` (any transformers tokenizer's files) instead of
`image_encoder/` and `feature_extractor/`; transformers reads and writes both.

sgm single file: the tower under sgm's conditioner names (sgm/modules/encoders/modules.py):
- written as `FrozenOpenCLIPEmbedder` (SD 2.1's text conditioner, the one SVD's base model is
  believed to use): `conditioner.embedders.0.model.` + OpenCLIP's text names: token_embedding.weight,
  positional_embedding, transformer.resblocks.<i>.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}, ln_final, text_projection (width x projection, applied as x @ P);
- read from that or from `FrozenCLIPEmbedder` (a transformers CLIPTextModel stored whole:
  `conditioner.embedders.0.transformer.text_model.*`).
The file's metadata carries the transformers config (`svd_fast_text_encoder`) and the tokenizer's
files (`svd_fast_tokenizer`, a JSON object file name -> content), so a file svd_fast wrote loads
alone; files from elsewhere get a config inferred from the shapes and need `tokenizer=`.

What the UNet sees is the tower's `last_hidden_state` (final LayerNorm applied): sgm's "last" layer.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch

from svd_fast.checkpoints import open_clip
from svd_fast.checkpoints.io import CheckpointError, TensorSource

OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."
HF_PREFIX = "conditioner.embedders.0.transformer."
CONFIG_METADATA = "svd_fast_text_encoder"
TOKENIZER_METADATA = "svd_fast_tokenizer"
CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")

_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
}
_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def canonical(key: str) -> str:
    """The checkpoint name of a transformers text-tower key: transformers 5's CLIPTextModel names its
    parameters without the `text_model.` that every saved CLIP text tower (and WithProjection) has."""
    return key if key.startswith("text_model.") or key == "text_projection.weight" else "text_model." + key


def open_clip_name(key: str) -> tuple[str, int | None]:
    """transformers text-tower key -> (OpenCLIP key without prefix, q/k/v chunk index or None)."""
    key = canonical(key)
    if key in _FIXED:
        return _FIXED[key], None
    match = _LAYER.fullmatch(key)
    if match and (name := open_clip.resblock_name(*match.groups())):
        return name
    raise KeyError(f"{key!r} is not a parameter of a CLIP text tower")


def is_text_tower_key(key: str) -> bool:
    return key.startswith(OPEN_CLIP_PREFIX) or key.startswith(HF_PREFIX)


def to_sgm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers text-tower state dict -> sgm file tensors (FrozenOpenCLIPEmbedder names)."""
    return open_clip.fused_state(state, open_clip_name, OPEN_CLIP_PREFIX, "text_projection.weight",
                                 "text tower state dict", CheckpointError)


def _from_sgm(source: TensorSource, keys: list[str]) -> dict[str, torch.Tensor]:
    """The transformers state dict (names `keys`) from an sgm file in either conditioner layout."""
    if any(k.startswith(HF_PREFIX) for k in source.keys()):
        return {k: source.read(HF_PREFIX + canonical(k)) for k in keys}
    state = {}
    for key in keys:
        name, index = open_clip_name(key)
        tensor = source.read(OPEN_CLIP_PREFIX + name)
        if index is not None:
            tensor = tensor.chunk(3, dim=0)[index]
        elif key == "text_projection.weight":
            tensor = tensor.t()
        state[key] = tensor.contiguous()
    return state


def metadata(text_encoder, tokenizer) -> dict[str, str]:
    """sgm metadata entries: the transformers config and the tokenizer's files."""
    config = json.loads(text_encoder.config.to_json_string(use_diff=False))
    config["architectures"] = [type(text_encoder).__name__]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.read_text() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    return {CONFIG_METADATA: json.dumps(config, sort_keys=True), TOKENIZER_METADATA: json.dumps(files, sort_keys=True)}


def _infer_config(source: TensorSource) -> dict:
    """transformers CLIPTextConfig entries from an sgm file's tensor shapes (no metadata)."""
    if any(k.startswith(HF_PREFIX) for k in source.keys()):
        p, shape = HF_PREFIX + "text_model.", lambda k: tuple(source.shapes[HF_PREFIX + "text_model." + k])
        layers = {int(m[1]) for k in source.keys() if (m := re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.", k))}
        vocab, width = shape("embeddings.token_embedding.weight")
        return {"vocab_size": vocab, "hidden_size": width, "num_hidden_layers": len(layers),
                "num_attention_heads": max(width // 64, 1), "intermediate_size": shape("encoder.layers.0.mlp.fc1.weight")[0],
                "max_position_embeddings": shape("embeddings.position_embedding.weight")[0],
                **_special_ids(vocab), "architectures": ["CLIPTextModel"]}  # default activation: OpenAI's quick_gelu
    p = OPEN_CLIP_PREFIX
    shape = lambda k: tuple(source.shapes[p + k])  # noqa: E731
    layers = {int(m[1]) for k in source.keys() if (m := re.match(re.escape(p) + r"transformer\.resblocks\.(\d+)\.", k))}
    vocab, width = shape("token_embedding.weight")
    has_projection = p + "text_projection" in source
    return {"vocab_size": vocab, "hidden_size": width, "num_hidden_layers": len(layers),
            "num_attention_heads": max(width // 64, 1), "intermediate_size": shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
            "max_position_embeddings": shape("positional_embedding")[0], "hidden_act": "gelu",  # OpenCLIP: exact GELU
            "projection_dim": shape("text_projection")[1] if has_projection else width, **_special_ids(vocab),
            "architectures": ["CLIPTextModelWithProjection" if has_projection else "CLIPTextModel"]}


def _special_ids(vocab: int) -> dict:
    """OpenAI's CLIP vocabulary ends with <|startoftext|>, <|endoftext|> (49406, 49407): assumed for
    files without a config (they only decide where the pooled output is read, not the token states)."""
    return {"bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": vocab - 1}


def _build(config: dict):
    import transformers

    architecture = (config.get("architectures") or ["CLIPTextModel"])[0]
    if architecture not in CLASSES:
        raise CheckpointError(f"text encoder is a {architecture}; svd_fast loads {' or '.join(CLASSES)}")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return getattr(transformers, architecture)(transformers.CLIPTextConfig(**config))


def _load_tokenizer(tokenizer, where: str):
    from transformers import AutoTokenizer

    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        path = tokenizer if tokenizer is not None else where
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: no loadable tokenizer ({exc})") from None
    return tokenizer


def read_sgm(source: TensorSource, dtype=None, device=None, tokenizer=None):
    """(text encoder, tokenizer) from an sgm single file."""
    if not any(is_text_tower_key(k) for k in source.keys()):
        raise CheckpointError(f"{source.name}: a text model without a text tower (no {OPEN_CLIP_PREFIX}* or {HF_PREFIX}* tensors)")
    config = json.loads(source.metadata[CONFIG_METADATA]) if CONFIG_METADATA in source.metadata else _infer_config(source)
    model = _build(config)
    keys = list(model.state_dict().keys())
    keys = [k for k in keys if not k.endswith("position_ids")]
    try:
        state = _from_sgm(source, keys)
    except KeyError as exc:
        raise CheckpointError(f"{source.name}: text tower lacks {exc}") from None
    _assign(model, state, source.name)
    if tokenizer is None:
        if TOKENIZER_METADATA not in source.metadata:
            raise CheckpointError(f"{source.name}: carries no tokenizer; pass tokenizer= (a transformers tokenizer or folder)")
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in json.loads(source.metadata[TOKENIZER_METADATA]).items():
                (Path(tmp) / Path(name).name).write_text(content)
            tokenizer = _load_tokenizer(None, tmp)
    else:
        tokenizer = _load_tokenizer(tokenizer, "")
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def _assign(model, state: dict, where: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"{where}: text tower mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")


def read_folder(folder: Path, dtype=None, device=None, tokenizer=None):
    """(text encoder, tokenizer) from a diffusers folder's text_encoder/ and tokenizer/."""
    import transformers

    from svd_fast.checkpoints.diffusers import read_json

    config = read_json(folder / "text_encoder" / "config.json")
    architecture = (config.get("architectures") or ["CLIPTextModel"])[0]
    if architecture not in CLASSES:
        raise CheckpointError(f"{folder / 'text_encoder' / 'config.json'}: is a {architecture}; svd_fast loads "
                              f"{' or '.join(CLASSES)}")
    try:
        model = getattr(transformers, architecture).from_pretrained(str(folder / "text_encoder"), dtype=dtype,
                                                                    use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'text_encoder'}: cannot load the text encoder ({exc})") from None
    return model.to(device=device).eval(), _load_tokenizer(tokenizer, folder / "tokenizer")


def write_folder(folder: Path, text_encoder, tokenizer) -> None:
    """text_encoder/ (safetensors) and tokenizer/ into a pipeline folder being written."""
    text_encoder.save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
