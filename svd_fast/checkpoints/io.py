"""Reading and writing tensors safely, and loading them into models on the meta device.

- `open_tensors(path)` gives a lazy `TensorSource` (names and shapes from the header, data read one
  tensor at a time) for a safetensors file, a sharded safetensors/bin index, or a torch file
  (`.bin/.pt/.pth/.ckpt`, only through `torch.load(weights_only=True)`: never unpickled).
- A `Plan` says how each model parameter is made from checkpoint tensors (a rename, a split, a
  transpose). `check_plan` validates names and shapes against the model before any data is read;
  `load_module` builds the model on the meta device and assigns the tensors, so peak memory is
  about one copy of the weights.
- Writes are atomic: a temporary file (or folder) next to the target, then os.replace.

Every problem raises CheckpointError naming the file and what is wrong.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from svd_fast.atomic import atomic_path, temporary_sibling  # noqa: F401 (atomic_path: public here too)

# bytes per element of the safetensors dtypes
_SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
    "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MAX_LISTED = 5  # how many example keys an error message lists


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model. The message names the file."""


def _few(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


class TensorSource:
    """Read-only lazy view of one checkpoint's tensors: names and shapes without reading any data."""

    def __init__(self, name: str, shapes: dict[str, tuple[int, ...]], read: Callable[[str], torch.Tensor],
                 metadata: dict[str, str] | None = None):
        self.name = name
        self.shapes = shapes
        self._read = read
        self.metadata = metadata or {}

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], name: str) -> "TensorSource":
        return cls(name, {k: tuple(v.shape) for k, v in state_dict.items()}, state_dict.__getitem__)

    def keys(self):
        return self.shapes.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def read(self, key: str) -> torch.Tensor:
        try:
            return self._read(key)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors / torch errors on a damaged file
            raise CheckpointError(f"{self.name}: cannot read tensor {key!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------- reading


def _counts(value, length: int | None = None) -> bool:
    """A JSON list of non-negative integers (of `length` items): a shape or a byte range."""
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(type(v) is int and v >= 0 for v in value))


def read_safetensors_header(path: Path) -> tuple[dict, dict[str, str]]:
    """Parse and validate a safetensors header: (tensor entries, __metadata__).

    Checks that the header fits the file, is JSON, and that every tensor's byte range matches its
    dtype and shape and lies inside the data section, which they must cover exactly (a truncated
    or padded file fails here instead of deep inside a model load).
    """
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file (truncated?)")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: truncated or corrupt safetensors file: header claims {header_len} bytes, "
                f"only {size - 8} follow"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ is not a map of strings)")
    data_size = size - 8 - header_len
    end_max = 0
    for key, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not (isinstance(dtype, str) and dtype in _SAFETENSORS_ITEMSIZE and _counts(entry.get("shape"))
                and _counts(entry.get("data_offsets"), length=2)):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {key!r}: {str(entry)[:200]}")
        shape, (begin, end) = entry["shape"], entry["data_offsets"]
        expected = math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]
        if not begin <= end or end - begin != expected:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: {key!r} ({dtype}, shape {shape}) has byte range "
                f"[{begin}, {end}], expected {expected} bytes"
            )
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {key!r} ends at byte {end} of the data "
                f"section, which has only {data_size} bytes"
            )
        end_max = max(end_max, end)
    if end_max != data_size:
        raise CheckpointError(f"{path}: corrupt safetensors file: {data_size - end_max} unexplained bytes after the tensors")
    return header, metadata


def _open_safetensors(path: Path) -> TensorSource:
    from safetensors import safe_open

    header, metadata = read_safetensors_header(path)
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot open safetensors file: {exc}") from exc
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    return TensorSource(str(path), shapes, handle.get_tensor, metadata)


def _torch_load(path: Path) -> dict:
    """torch.load with weights_only=True (no arbitrary code); mmap when the format allows it."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds Python objects beyond tensors, and svd_fast "
            f"only loads torch files with weights_only=True. Convert it to safetensors with a tool you "
            f"trust. ({str(exc).splitlines()[0]})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read torch file (truncated or corrupt?): {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # PyTorch Lightning / sgm .ckpt
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_few(map(str, bad))}")
    return obj


def _open_torch(path: Path) -> TensorSource:
    state = _torch_load(path)
    return TensorSource(str(path), {k: tuple(v.shape) for k, v in state.items()}, state.__getitem__)


def _open_index(path: Path) -> TensorSource:
    """A sharded checkpoint: `*.index.json` whose weight_map names the shard of every tensor."""
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt shard index (expected JSON with a 'weight_map' object): {exc}") from exc
    shards = {name: open_tensors(path.parent / name) for name in sorted(set(weight_map.values()))}
    for key, shard in weight_map.items():
        if key not in shards[shard]:
            raise CheckpointError(f"{path}: index puts {key!r} in {shard}, which does not contain it")
    shapes = {k: shards[s].shapes[k] for k, s in weight_map.items()}
    return TensorSource(str(path), shapes, lambda key: shards[weight_map[key]].read(key))


def open_tensors(path) -> TensorSource:
    """A lazy TensorSource for a .safetensors file, a *.index.json shard index, or a torch file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a weights file")
    if path.name.endswith(".index.json"):
        return _open_index(path)
    if path.suffix == ".safetensors":
        return _open_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _open_torch(path)
    raise CheckpointError(f"{path}: unknown weights format (expected .safetensors, *.index.json or {'/'.join(TORCH_SUFFIXES)})")


# ------------------------------------------------------------------------------ what is this file?

# (test on the key set, description): the first matches are reported when keys do not fit a model.
_SIGNATURES: list[tuple[Callable[[set[str]], bool], str]] = [
    (lambda ks: any("lora" in k.lower() for k in ks), "a LoRA adapter (lora tensors), not full model weights"),
    (lambda ks: any(k.startswith("model.diffusion_model.") for k in ks) and not any(".time_stack." in k for k in ks),
     "an image (2-D) LDM/sgm UNet such as Stable Diffusion 1.x/2.x or SDXL: model.diffusion_model.* without "
     "temporal layers (time_stack)"),
    (lambda ks: any(k.startswith("model.diffusion_model.") and ".time_stack." in k for k in ks),
     "an sgm SVD single-file checkpoint (model.diffusion_model.* with time_stack)"),
    (lambda ks: any(k.startswith("cond_stage_model.") for k in ks), "a Stable Diffusion 1.x/2.x checkpoint (cond_stage_model.*)"),
    (lambda ks: any(".temporal_transformer_blocks." in k for k in ks),
     "a diffusers SVD UNet (UNetSpatioTemporalConditionModel)"),
    (lambda ks: any(".transformer_blocks." in k and k.startswith(("down_blocks.", "mid_block.")) for k in ks),
     "a diffusers 2-D UNet (UNet2DConditionModel): transformer blocks without temporal_transformer_blocks"),
    (lambda ks: any(k.startswith("decoder.time_conv_out.") for k in ks),
     "a diffusers temporal VAE (AutoencoderKLTemporalDecoder)"),
    (lambda ks: any(k.startswith("post_quant_conv.") for k in ks),
     "a per-frame AutoencoderKL (SD image VAE, with post_quant_conv), not SVD's temporal-decoder VAE"),
    (lambda ks: any(k.startswith("vision_model.") for k in ks), "a transformers CLIP vision tower"),
    (lambda ks: any(k.startswith("text_model.") for k in ks), "a CLIP text encoder"),
]


def describe_keys(keys: Iterable[str]) -> str:
    """What a key set looks like, for 'wrong architecture' messages."""
    keys = set(keys)
    if not keys:
        return "no tensors at all"
    for test, description in _SIGNATURES:
        if test(keys):
            return f"it looks like {description}"
    return f"unrecognised tensor names (e.g. {_few(keys)})"


# ---------------------------------------------------------------------------- plans and loading

Transform = Callable[..., torch.Tensor]
Plan = dict  # target key -> (tuple of source keys, Transform or None for "the single source as is")


def identity_plan(keys: Iterable[str]) -> Plan:
    return {k: ((k,), None) for k in keys}


def _planned_shape(sources: tuple[str, ...], fn: Transform | None, source: TensorSource) -> tuple[int, ...]:
    if fn is None:
        return source.shapes[sources[0]]
    metas = [torch.empty(source.shapes[s], device="meta") for s in sources]
    return tuple(fn(*metas).shape)


def check_plan(plan: Plan, source: TensorSource, expected: dict[str, tuple[int, ...]], what: str,
               consumed: tuple[str, ...] = ("",), ignored: tuple[str, ...] = ()) -> None:
    """Validate names and shapes before reading data.

    expected: target key -> shape of the model. Source keys starting with a prefix in `consumed`
    (and none in `ignored`) must all be used by the plan, or they count as unexpected.
    """
    if set(plan) != set(expected):
        raise RuntimeError(f"internal error: plan for {what} does not cover the model's parameters")
    needed = {s for sources, _ in plan.values() for s in sources}
    missing = sorted(needed - source.keys())
    unexpected = sorted(
        k for k in source.keys() if k.startswith(consumed) and not k.startswith(ignored) and k not in needed
    )
    if len(missing) > len(needed) // 2:
        raise CheckpointError(
            f"{source.name}: not a {what} checkpoint: {describe_keys(source.keys())}; "
            f"{len(missing)} of {len(needed)} expected tensors are missing (e.g. {_few(missing)})"
        )
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {_few(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {_few(unexpected)})"] if unexpected else []
        raise CheckpointError(f"{source.name}: {what} tensors do not match the model: " + "; ".join(parts))
    mismatched = []
    for target, (sources, fn) in plan.items():
        got = _planned_shape(sources, fn, source)
        if got != tuple(expected[target]):
            origin = "" if sources == (target,) else f" (from {', '.join(sources)})"
            mismatched.append(f"{target}{origin}: checkpoint {list(got)} vs model {list(expected[target])}")
    if mismatched:
        more = f" and {len(mismatched) - MAX_LISTED} more" if len(mismatched) > MAX_LISTED else ""
        raise CheckpointError(
            f"{source.name}: {what} shape mismatch (does the config match the weights?): "
            + "; ".join(mismatched[:MAX_LISTED]) + more
        )


def read_plan(plan: Plan, source: TensorSource, dtype: torch.dtype | None = None, device=None) -> dict[str, torch.Tensor]:
    """Materialise the plan's tensors, cast (floating point only) and moved one tensor at a time."""
    out, cache = {}, {}
    for target, (sources, fn) in plan.items():
        if not all(s in cache for s in sources):
            cache = {s: source.read(s) for s in sources}  # keep the last group: q/k/v splits share it
        tensor = cache[sources[0]] if fn is None else fn(*(cache[s] for s in sources))
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[target] = tensor.to(device).contiguous() if device is not None else tensor.contiguous()
    return out


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module without allocating or initialising its weights."""
    with torch.device("meta"):
        return factory()


def assign_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """load_state_dict(strict, assign) into a meta-built module; nothing may stay on meta."""
    module.load_state_dict(state, strict=True, assign=True)
    on_meta = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"internal error: {what} tensors left on the meta device: {_few(on_meta)}")
    return module.eval()


# ---------------------------------------------------------------------------------------- writing


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors (moved to CPU, contiguous) to a safetensors file."""
    from safetensors.torch import save_file

    cpu = {}
    for key, tensor in tensors.items():
        if tensor.is_meta:
            raise CheckpointError(f"{path}: cannot save {key!r}: it has no data (meta tensor)")
        cpu[key] = tensor.detach().to("cpu").contiguous()
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata={"format": "pt", **(metadata or {})})


@contextmanager
def atomic_folder(path, overwrite: bool = False):
    """Yield a fresh temporary folder next to `path`; on success it becomes `path`.

    An existing `path` is refused unless overwrite=True; it is then replaced only after the new
    folder is complete, so a failure at any point leaves the old content untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    tmp = temporary_sibling(path)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            old = temporary_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
