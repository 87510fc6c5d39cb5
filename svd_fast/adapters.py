"""Low-rank adapters (LoRA) on the UNet's Linear and convolution layers, for sampling and for training.

Several named adapters may sit on one layer, each with its own scale; they are switched, weighted,
fused and unloaded with diffusers' names and semantics (SVDPipeline delegates here), and read from
svd_fast's LoRA files and from diffusers / PEFT LoRA state dicts of this UNet (our module names
are diffusers', so keys map by name: svd_fast/checkpoints/diffusers.py).

An adapted layer is a LoRALinear (or LoRAConv2d / LoRAConv3d): its base weight W stays the
parameter `weight`, and adapter `a` adds the parameters `lora_A_<a>` and `lora_B_<a>` on the layer
itself (DeepSpeed ZeRO-3 gathers a module's own parameters around its forward). `weight` reads as
    W + sum over active adapters a of  weight_a * scaling_a * B_a @ A_a,   scaling_a = alpha_a / rank_a,
so every code path sees the adapted weight, whether it calls the module or reads `.weight` (fused
kernels, the temporal conv and the Winograd 3x3 conv do). Fusing adds that sum into W once; `weight`
is then W as stored and the adapters cannot change until unfused, which subtracts the same sum
(exact up to float rounding of W + d - d).

Factor shapes: Linear (in -> out): A (rank, in), B (out, rank). Convolution (in -> out, kernel k):
A (rank, in, *k), a conv of the layer's kernel down to `rank` channels, and B (out, rank, 1, ..),
a 1x1 conv back up, as PEFT stores conv LoRA; B @ A is taken on the flattened factors and reshaped
to the conv weight (out, in, *k). Grouped convs are not targets.

Targets are fnmatch patterns on module names: a plain pattern selects Linear layers, a pattern
written `conv:<pattern>` selects convolutions (nn.Conv2d, including svd_fast.layers.Conv2d, and the
temporal ResBlocks' (3,1,1) nn.Conv3d), so 'all_linear' (`*`) stays on Linear layers. Preset names
may be combined with patterns and other presets.

svd_fast's file format: safetensors with `<layer>.lora_A` / `<layer>.lora_B` and the LoRAConfig as
JSON under the metadata key 'svd_fast_lora'. A file is one adapter; its name is given on loading.
The paper's camera-motion LoRAs sit in the temporal attention with rank 16 (App. D.4.2): the
'temporal_attention' preset.
"""
from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from svd_fast import layers

CONV = "conv:"
"""prefix of target patterns that select convolutions (plain patterns select Linear layers)"""
PRESETS = {
    "temporal_attention": ("*temporal_transformer_blocks.*.attn1.to_[qkv]", "*temporal_transformer_blocks.*.attn1.to_out.0"),
    "attention": ("*.attn[12].to_[qkv]", "*.attn[12].to_out.0"),
    "all_linear": ("*",),
    "temporal_convs": (CONV + "*temporal_res_block.conv[12]",),
    "temporal": ("temporal_attention", "temporal_convs"),
    "convs": (CONV + "*",),
    "all_linear_conv": ("all_linear", "convs"),
}
PRESET_WORDS = {
    "temporal_attention": "the temporal attention (q, k, v, out)",
    "attention": "the spatial and temporal attention (q, k, v, out)",
    "all_linear": "every Linear layer (spatial and temporal attention, feed-forwards, projections, embeddings)",
    "temporal_convs": "the temporal ResBlocks' (3,1,1) convolutions",
    "temporal": "the temporal attention (q, k, v, out) and the temporal ResBlocks' (3,1,1) convolutions",
    "convs": "every convolution (spatial 3x3 and 1x1, down/upsamplers, temporal (3,1,1))",
    "all_linear_conv": "every Linear layer and every convolution (spatial and temporal)",
}
"""what each preset covers, in words (model cards)"""
METADATA_KEY = "svd_fast_lora"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY (a PEFT LoraConfig)
DEFAULT_ADAPTER = "default"
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")  # part of a parameter name: no dots
_IN_MODEL = re.compile(r"\.lora_([AB])_([A-Za-z0-9_]+)$")
_IN_FILE = re.compile(r"\.lora_([AB])$")


@dataclass(frozen=True)
class LoRAConfig:
    """Which layers get adapters and how big they are."""

    rank: int = 16
    alpha: float = 16.0
    """the adapter's product is scaled by alpha / rank"""
    targets: tuple[str, ...] = PRESETS["temporal_attention"]
    """fnmatch patterns on module names (e.g. 'down_blocks.0.*.to_q', 'conv:*.conv1') and preset names"""

    def patterns(self) -> tuple[str, ...]:
        return _expand(self.targets)

    def validate(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"lora: rank must be >= 1 and alpha > 0, got rank={self.rank}, alpha={self.alpha}")


def _expand(targets) -> tuple[str, ...]:
    return tuple(p for t in targets for p in (_expand(PRESETS[t]) if t in PRESETS else (t,)))


def describe_targets(targets) -> str:
    """The layers a LoRAConfig's targets select, in words."""
    words = [PRESET_WORDS.get(t, f"the layers matching `{t}`") for t in targets]
    return " and ".join(words)


class LoRALayer:
    """Mixin of an adapted layer: `weight` adds its active adapters' products (add_adapter sets a
    LoRA class on the layer; LORA_CLASS maps each plain class to its adapted one)."""

    lora_scaling: dict[str, float]  # alpha / rank of each adapter
    lora_weights: dict[str, float]  # each adapter's user weight (load scale, set_adapters)
    lora_active: tuple[str, ...]
    lora_enabled: bool
    lora_fused: dict[str, float] | None  # coefficient of each adapter folded into W, None when unfused

    @property
    def weight(self) -> torch.Tensor:
        base = self._parameters["weight"]
        if self.lora_fused is not None or not self.lora_enabled or not self.lora_active:
            return base
        return base + self.lora_delta(self.lora_coefficients())

    def lora_coefficients(self, scale: float = 1.0) -> dict[str, float]:
        return {a: scale * self.lora_weights[a] * self.lora_scaling[a] for a in self.lora_active}

    def lora_delta(self, coefficients: dict[str, float]) -> torch.Tensor:
        """sum of c_a * B_a @ A_a, shaped as the weight (conv factors flattened to matrices first)."""
        weight = self._parameters["weight"]
        terms = [c * (self._parameters[f"lora_B_{a}"].flatten(1) @ self._parameters[f"lora_A_{a}"].flatten(1))
                 for a, c in coefficients.items()]
        return sum(terms[1:], terms[0]).reshape(weight.shape).to(weight.dtype)


class LoRALinear(LoRALayer, nn.Linear):
    """nn.Linear with adapters."""


class LoRAConv2d(LoRALayer, layers.Conv2d):
    """svd_fast.layers.Conv2d with adapters (its 3x3 case still runs the conv3x3 kernels, on the adapted weight)."""


class LoRATorchConv2d(LoRALayer, nn.Conv2d):
    """nn.Conv2d with adapters."""


class LoRAConv3d(LoRALayer, nn.Conv3d):
    """nn.Conv3d with adapters (the temporal ResBlocks' (3,1,1) convs, which pass `.weight` to layers.temporal_conv)."""


LORA_CLASS = {nn.Linear: LoRALinear, layers.Conv2d: LoRAConv2d, nn.Conv2d: LoRATorchConv2d, nn.Conv3d: LoRAConv3d}
"""plain class -> adapted class; exact classes only (subclasses such as int8 layers keep their own forward)"""
_PLAIN_CLASS = {v: k for k, v in LORA_CLASS.items()}


def factor_shapes(layer: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of (A, B) for a layer: Linear (rank, in), (out, rank); conv (rank, in, *k), (out, rank, 1, ..)."""
    if isinstance(layer, nn.Linear):
        return (rank, layer.in_features), (layer.out_features, rank)
    kernel = tuple(layer.kernel_size)
    return (rank, layer.in_channels, *kernel), (layer.out_channels, rank, *(1,) * len(kernel))


def _layer_words(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"a Linear of {layer.in_features} -> {layer.out_features}"
    kind = _PLAIN_CLASS.get(type(layer), type(layer)).__name__
    return f"a {kind} of {layer.in_channels} -> {layer.out_channels}, kernel {tuple(layer.kernel_size)}"


def _adaptable(layer) -> bool:
    return type(layer) in LORA_CLASS or type(layer) in _PLAIN_CLASS


def adapted_layers(model: nn.Module) -> dict[str, LoRALayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter loaded on the model, in loading order."""
    return list(getattr(model, "lora_configs", {}))


def is_lora_name(name: str) -> bool:
    """True for adapter tensors, in a model (`<layer>.lora_A_<adapter>`) or in a file (`<layer>.lora_A`)."""
    return bool(_IN_MODEL.search(name) or _IN_FILE.search(name))


def file_key(name: str) -> str:
    """`<layer>.lora_A_<adapter>` -> `<layer>.lora_A` (file keys name no adapter)."""
    return _IN_MODEL.sub(lambda m: f".lora_{m.group(1)}", name)


def model_key(name: str, adapter: str) -> str:
    """`<layer>.lora_A` (or any adapter's name) -> `<layer>.lora_A_<adapter>`."""
    return _IN_FILE.sub(lambda m: f".lora_{m.group(1)}_{adapter}", file_key(name))


def target_names(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Names of the modules matched by the config's patterns: Linear layers by plain patterns,
    convolutions (ungrouped) by `conv:` patterns."""
    linear = [p for p in config.patterns() if not p.startswith(CONV)]
    conv = [p.removeprefix(CONV) for p in config.patterns() if p.startswith(CONV)]
    names = []
    for name, module in model.named_modules():
        if not _adaptable(module):
            continue
        patterns = linear if isinstance(module, nn.Linear) else conv if module.groups == 1 else ()
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            names.append(name)
    return names


# ------------------------------------------------------------------------ adding and removing
def add_adapter(model: nn.Module, adapter: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                scaling: dict[str, float], config: LoRAConfig, weight: float = 1.0, what: str = "LoRA",
                keys: dict[str, str] | None = None) -> None:
    """Put adapter `adapter` on the named layers: factors[layer] = (A, B) of `factor_shapes`; the
    adapter is active.

    Raises a one-line ValueError naming the first layer (its key in `keys`, when given) that does
    not exist, is not a Linear or an ungrouped convolution, or whose factors do not fit it; nothing
    is changed then."""
    if not _ADAPTER_NAME.match(adapter):
        raise ValueError(f"adapter name {adapter!r}: use letters, digits and '_' only")
    if adapter in adapter_names(model):
        raise ValueError(f"adapter name {adapter!r} is already in use; pick another or unload it first")
    _refuse_when_fused(model)
    modules = dict(model.named_modules())
    for name, (a, b) in factors.items():
        layer, key = modules.get(name), (keys or {}).get(name, name)
        if not _adaptable(layer) or getattr(layer, "groups", 1) != 1:  # subclasses (e.g. int8 layers) keep their forward
            raise ValueError(f"{what}: {key}: names no Linear layer or convolution of this UNet (no plain nn.Linear, "
                             f"nn.Conv2d or nn.Conv3d {name!r} without groups)")
        want_a, want_b = factor_shapes(layer, a.shape[0] if a.ndim else 0)
        if (tuple(a.shape), tuple(b.shape)) != (want_a, want_b):
            raise ValueError(f"{what}: {key}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit {name}, "
                             f"{_layer_words(layer)} (needs {want_a} / {want_b})")
    for name, (a, b) in factors.items():
        layer = modules[name]
        base = layer._parameters["weight"]
        if not isinstance(layer, LoRALayer):
            layer.__class__ = LORA_CLASS[type(layer)]
            layer.lora_scaling, layer.lora_weights, layer.lora_active = {}, {}, ()
            layer.lora_enabled, layer.lora_fused = True, None
        layer.register_parameter(f"lora_A_{adapter}", nn.Parameter(a.detach().to(base.device, base.dtype)))
        layer.register_parameter(f"lora_B_{adapter}", nn.Parameter(b.detach().to(base.device, base.dtype)))
        layer.lora_scaling[adapter], layer.lora_weights[adapter] = float(scaling[name]), float(weight)
        layer.lora_active = (*layer.lora_active, adapter)
    model.lora_configs = {**getattr(model, "lora_configs", {}), adapter: config}


def attach_lora(model: nn.Module, config: LoRAConfig, adapter: str = DEFAULT_ADAPTER) -> list[str]:
    """Add a fresh adapter (A random, B zero: the model starts unchanged) to every matched layer;
    returns their names. Only adapter weights train after `mark_only_lora_trainable`."""
    config.validate()
    names = target_names(model, config)
    if not names:
        raise ValueError(f"lora: no nn.Linear module matches {list(config.patterns())} (nor a convolution: "
                         f"those match '{CONV}' patterns)")
    modules = dict(model.named_modules())
    factors = {}
    for name in names:
        layer = modules[name]
        shape_a, shape_b = factor_shapes(layer, config.rank)
        a = torch.empty(shape_a, device=layer._parameters["weight"].device)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear / nn.Conv initialise a weight (fan-in: in * kernel)
        factors[name] = (a, torch.zeros(shape_b))
    add_adapter(model, adapter, factors, dict.fromkeys(names, config.alpha / config.rank), config)
    return names


def delete_adapters(model: nn.Module, adapters) -> None:
    """Remove the named adapters; a layer left without adapters is a plain layer again."""
    adapters = [adapters] if isinstance(adapters, str) else list(adapters)
    _check_known(model, adapters)
    _refuse_when_fused(model)
    for layer in adapted_layers(model).values():
        for a in adapters:
            if f"lora_A_{a}" in layer._parameters:
                del layer._parameters[f"lora_A_{a}"], layer._parameters[f"lora_B_{a}"]
                del layer.lora_scaling[a], layer.lora_weights[a]
        layer.lora_active = tuple(a for a in layer.lora_active if a not in adapters)
        if not layer.lora_scaling:
            _to_plain(layer)
    model.lora_configs = {k: v for k, v in model.lora_configs.items() if k not in adapters}


def unload(model: nn.Module) -> None:
    """Remove every adapter. Fused adapters stay in the base weights (diffusers' fuse-then-unload)."""
    for layer in adapted_layers(model).values():
        for a in layer.lora_scaling:
            del layer._parameters[f"lora_A_{a}"], layer._parameters[f"lora_B_{a}"]
        _to_plain(layer)
    model.lora_configs = {}


def _to_plain(layer: LoRALayer) -> None:
    for attr in ("lora_scaling", "lora_weights", "lora_active", "lora_enabled", "lora_fused"):
        delattr(layer, attr)
    layer.__class__ = _PLAIN_CLASS[type(layer)]


# --------------------------------------------------------------------------------- switching
def set_adapters(model: nn.Module, adapters, weights=None) -> None:
    """Make exactly `adapters` active, each with its weight (a number for all, or one per adapter;
    None: 1.0). Active adapters add up: two at once apply the weighted sum of their products."""
    adapters = [adapters] if isinstance(adapters, str) else list(adapters)
    if weights is None or isinstance(weights, (int, float)):
        weights = [1.0 if weights is None else float(weights)] * len(adapters)
    weights = list(weights)
    if len(weights) != len(adapters):
        raise ValueError(f"set_adapters: {len(adapters)} adapters but {len(weights)} weights")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"set_adapters: weights must be finite numbers, got {weights}")
    _check_known(model, adapters)
    _refuse_when_fused(model)
    for layer in adapted_layers(model).values():
        layer.lora_active = tuple(a for a in adapters if a in layer.lora_scaling)
        layer.lora_weights.update({a: w for a, w in zip(adapters, weights) if a in layer.lora_scaling})
        layer.lora_enabled = True


def active_adapters(model: nn.Module) -> list[str]:
    """The adapters applied now (none while disabled)."""
    active = set()
    for layer in adapted_layers(model).values():
        if layer.lora_enabled:
            active.update(layer.lora_active)
    return [a for a in adapter_names(model) if a in active]


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """disable_lora / enable_lora: run the base model, or the active adapters again."""
    _refuse_when_fused(model)
    for layer in adapted_layers(model).values():
        layer.lora_enabled = enabled


def _check_known(model: nn.Module, adapters: list[str]) -> None:
    unknown = [a for a in adapters if a not in adapter_names(model)]
    if unknown:
        raise ValueError(f"unknown adapter {unknown[0]!r}; loaded: {adapter_names(model)}")


def _refuse_when_fused(model: nn.Module) -> None:
    if is_fused(model):
        raise ValueError("the LoRA adapters are fused into the weights: call unfuse_lora() before changing them")


def is_fused(model: nn.Module) -> bool:
    return any(layer.lora_fused is not None for layer in adapted_layers(model).values())


# ----------------------------------------------------------------------------------- fusing
@torch.no_grad()
def fuse(model: nn.Module, lora_scale: float = 1.0) -> None:
    """Fold the active adapters, times lora_scale, into the base weights (W += sum c_a B_a A_a)."""
    _refuse_when_fused(model)
    for layer in adapted_layers(model).values():
        coefficients = layer.lora_coefficients(lora_scale) if layer.lora_enabled else {}
        if coefficients:
            _replace_base(layer, layer.lora_delta(coefficients))
        layer.lora_fused = coefficients


@torch.no_grad()
def unfuse(model: nn.Module) -> None:
    """Undo `fuse` (W -= the same sum), applying the active adapters on the fly again."""
    for layer in adapted_layers(model).values():
        if layer.lora_fused:
            _replace_base(layer, -layer.lora_delta(layer.lora_fused))
        layer.lora_fused = None


def _replace_base(layer: LoRALayer, delta: torch.Tensor) -> None:
    """W <- W + delta into new storage (W's layout kept), not in place: caches keyed on the weight's
    storage and version (the Winograd transform of 3x3 convs) must see a changed weight, and
    inference tensors (weights made under torch.inference_mode) have no version counter to bump."""
    weight = layer._parameters["weight"]
    with torch.inference_mode(weight.is_inference()):  # the new storage is an inference tensor iff W was
        weight.data = weight.detach().clone().add_(delta)


# ----------------------------------------------------------------------- svd_fast's file format
def adapter_state_dict(model: nn.Module, adapter: str = DEFAULT_ADAPTER) -> dict[str, torch.Tensor]:
    """One adapter's tensors under file keys (`<layer>.lora_A` / `<layer>.lora_B`)."""
    _check_known(model, [adapter])
    return {file_key(n): p for n, p in model.state_dict().items() if _adapter_of(n) == adapter}


def _adapter_of(name: str) -> str | None:
    match = _IN_MODEL.search(name)
    return match.group(2) if match else None


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights without adapter tensors (fused adapters included when fused)."""
    return {name: p for name, p in model.state_dict().items() if not is_lora_name(name)}


def save_lora_tensors(tensors: dict[str, torch.Tensor], config: LoRAConfig, path) -> None:
    """Write one adapter's tensors (model or file keys) with its config to a safetensors file (atomically)."""
    from svd_fast.checkpoints.io import save_safetensors

    adapters = {m.group(2) for m in map(_IN_MODEL.search, tensors) if m}
    if len(adapters) > 1:
        raise ValueError(f"save_lora_tensors: a file holds one adapter, got tensors of {sorted(adapters)}")
    meta = {"rank": config.rank, "alpha": config.alpha, "targets": list(config.targets)}
    save_safetensors({file_key(k): v for k, v in tensors.items()}, path, metadata={METADATA_KEY: json.dumps(meta)})


def save_lora(model: nn.Module, path, adapter: str = DEFAULT_ADAPTER) -> None:
    """Write one adapter as an svd_fast LoRA file. Its config has one alpha; a layer loaded with
    another scaling (a diffusers file's per-layer alpha) has that ratio folded into its lora_B."""
    if adapter not in adapter_names(model):
        raise ValueError(f"save_lora: the model has no LoRA adapter {adapter!r} (loaded: {adapter_names(model)})")
    config = model.lora_configs[adapter]
    tensors = adapter_state_dict(model, adapter)
    for name, layer in adapted_layers(model).items():
        if adapter in layer.lora_scaling:
            ratio = layer.lora_scaling[adapter] / (config.alpha / tensors[f"{name}.lora_A"].shape[0])
            if ratio != 1.0:
                tensors[f"{name}.lora_B"] = tensors[f"{name}.lora_B"] * ratio
    save_lora_tensors(tensors, config, path)


def read_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (the only format read: no pickles)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except SafetensorError as err:
        raise ValueError(f"{path}: not a safetensors file ({err})") from None


def read_lora(path, adapter: str = DEFAULT_ADAPTER) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """An svd_fast LoRA file: its config and tensors, named as in a model holding it as `adapter`."""
    tensors, metadata = read_file(path)
    config = _our_config(metadata)
    if config is None:
        raise ValueError(f"{path}: not an svd_fast LoRA file (no '{METADATA_KEY}' metadata)")
    return config, {model_key(k, adapter): v for k, v in tensors.items()}


def _our_config(metadata: dict) -> LoRAConfig | None:
    if METADATA_KEY not in metadata:
        return None
    fields = json.loads(metadata[METADATA_KEY])
    return LoRAConfig(rank=int(fields["rank"]), alpha=float(fields["alpha"]), targets=tuple(fields["targets"]))


@torch.no_grad()
def copy_adapter(model: nn.Module, tensors: dict[str, torch.Tensor], what, adapter: str = DEFAULT_ADAPTER) -> None:
    """Copy tensors (model or file keys) into an attached adapter, which they must match exactly."""
    params = {name: p for name, p in model.named_parameters() if _adapter_of(name) == adapter}
    tensors = {model_key(k, adapter): v for k, v in tensors.items()}
    missing, unexpected = params.keys() - tensors.keys(), tensors.keys() - params.keys()
    if missing or unexpected:
        raise ValueError(f"{what}: LoRA tensors do not fit this model: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    for key, value in tensors.items():
        if params[key].shape != value.shape:
            raise ValueError(f"{what}: {file_key(key)} has shape {tuple(value.shape)}, the model needs {tuple(params[key].shape)}")
        params[key].copy_(value)


def apply_lora(model: nn.Module, config: LoRAConfig, tensors: dict[str, torch.Tensor], merge: bool = False,
               what: str = "LoRA", adapter: str = DEFAULT_ADAPTER) -> None:
    """Attach adapters of `config` and fill them with `tensors` (optionally fusing them)."""
    attach_lora(model, config, adapter)
    try:
        copy_adapter(model, tensors, what, adapter)
    except ValueError:
        delete_adapters(model, [adapter])
        raise
    if merge:
        fuse(model)


def load_lora(model: nn.Module, path, merge: bool = False, adapter: str = DEFAULT_ADAPTER) -> LoRAConfig:
    """Attach the adapter stored in an svd_fast LoRA file, whose layer names must be exactly those
    its patterns select in this model. merge=True folds it into the base weights at once."""
    config, tensors = read_lora(path, adapter)
    apply_lora(model, config, tensors, merge, str(path), adapter)
    return config


# ------------------------------------------------------------------------- any LoRA state dict
def load_adapter(model: nn.Module, source, adapter: str | None = None, scale: float = 1.0) -> str:
    """Load an adapter from an svd_fast LoRA file, a diffusers / PEFT LoRA safetensors file of this
    UNet, or such a state dict; it becomes active with weight `scale`. Returns its name (default:
    'default_<n>', as diffusers names them)."""
    if not math.isfinite(scale):
        raise ValueError(f"LoRA scale must be a finite number, got {scale}")
    if isinstance(source, dict):
        tensors, metadata, what = dict(source), {}, "LoRA state dict"
    else:
        (tensors, metadata), what = read_file(source), str(source)
    if adapter is None:
        adapter = f"default_{len(adapter_names(model))}"
    ours = _our_config(metadata)
    factors, alphas, keys = parse_state_dict(tensors, what)
    if not factors:
        raise ValueError(f"{what}: holds no LoRA tensors")
    options = _peft_options(metadata)
    scaling = {}
    for layer, (a, _) in factors.items():
        rank = a.shape[0]
        alpha = ours.alpha if ours is not None else alphas.get(layer, _pattern_value(options, "alpha_pattern", layer,
                                                                                       options.get("lora_alpha", rank)))
        scaling[layer] = alpha / (math.sqrt(rank) if options.get("use_rslora") else rank)
    if ours is None:  # the config save_lora writes: the first layer's alpha (others fold theirs into B)
        first, (a, _) = next(iter(factors.items()))
        ours = LoRAConfig(rank=a.shape[0], alpha=scaling[first] * a.shape[0], targets=tuple(sorted(factors)))
    add_adapter(model, adapter, factors, scaling, ours, weight=scale, what=what, keys=keys)
    return adapter


# key endings of LoRA tensors: ours, PEFT / diffusers (optionally with PEFT's adapter name), and
# diffusers' older `lora.down` / `lora.up` form; `.alpha` holds a layer's alpha (network alpha).
_KEY_FORMS = (
    (re.compile(r"^(.+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$"), None),
    (re.compile(r"^(.+)\.lora_([AB])$"), None),
    (re.compile(r"^(.+)\.lora\.(down|up)\.weight$"), {"down": "A", "up": "B"}),
    (re.compile(r"^(.+?)(?:\.lora)?\.(alpha)$"), None),
)
# diffusers' oldest attention-processor names (utils/state_dict_utils.py, UNET_TO_DIFFUSERS)
_OLD_NAMES = ((".processor.", "."), ("to_out_lora.", "to_out.0.lora."), ("to_q_lora.", "to_q.lora."),
              ("to_k_lora.", "to_k.lora."), ("to_v_lora.", "to_v.lora."))
_PREFIXES = ("unet.", "base_model.model.")


def parse_state_dict(tensors: dict[str, torch.Tensor], what: str = "LoRA"):
    """({layer: (A, B)}, {layer: alpha}, {layer: its lora_A key}) from a LoRA state dict; a key of
    no known form is an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    keys: dict[str, str] = {}
    for key, value in tensors.items():
        name = key
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        for old, new in _OLD_NAMES:
            name = name.replace(old, new)
        for pattern, roles in _KEY_FORMS:
            match = pattern.match(name)
            if match:
                break
        else:
            raise ValueError(f"{what}: {key}: not a LoRA tensor this loader reads (lora_A/lora_B weights, "
                             "lora.down/lora.up weights or alpha of a Linear or conv layer)")
        layer, role = match.group(1), match.group(2)
        if role == "alpha":
            alphas[layer] = float(value)
            continue
        role = roles[role] if roles else role
        if role in parts.setdefault(layer, {}):
            raise ValueError(f"{what}: {key}: a second lora_{role} for layer {layer}")
        parts[layer][role] = value
        keys.setdefault(layer, key)
    factors = {}
    for layer, pair in parts.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"{what}: {layer}: has lora_{next(iter(pair))} but no lora_{'B' if 'A' in pair else 'A'}")
        factors[layer] = (pair["A"].float(), pair["B"].float())
    stray = sorted(alphas.keys() - factors.keys())
    if stray:
        raise ValueError(f"{what}: {stray[0]}.alpha: an alpha for a layer without LoRA weights")
    return factors, alphas, keys


def _peft_options(metadata: dict) -> dict:
    """The PEFT LoraConfig fields diffusers stores (keys prefixed 'unet.'), or {}."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    options = {k.removeprefix("unet."): v for k, v in json.loads(raw).items()}
    if options.get("use_dora"):
        raise ValueError("DoRA adapters (use_dora) are not supported; only plain LoRA")
    return options


def _pattern_value(options: dict, field: str, layer: str, default):
    """PEFT's per-module override: the first pattern p of options[field] with re.match((.*\\.)?(p)$, layer)."""
    for pattern, value in (options.get(field) or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", layer):
            return value
    return default


def unet_to_save(pipe):
    """What save_pretrained writes for the UNet: the UNet itself, or without adapter tensors its
    weights as they compute now (fused adapters included). Unfused active adapters are refused,
    since the saved model could not reproduce them."""
    unet = plain_unet(pipe)
    if not adapted_layers(unet):
        return pipe.unet
    if active_adapters(unet) and not is_fused(unet):
        raise ValueError("the UNet has active LoRA adapters that are not fused: fuse_lora() to save them in the "
                         "weights, or unload_lora_weights() / disable_lora() to save the base model")
    return base_state_dict(unet)


# ------------------------------------------------------------------ fast paths of a pipeline
def plain_unet(pipe) -> nn.Module:
    """The eager UNet behind a pipeline's graph / compile wrappers."""
    from svd_fast.accel.compile import CompiledModule
    from svd_fast.accel.graphs import GraphedModule

    unet = pipe.unet
    if isinstance(unet, GraphedModule):
        unet = unet.module
    return unet.inner if isinstance(unet, CompiledModule) else unet


def edit(pipe, change, *args, **kwargs):
    """change(unet, *args, **kwargs) on a pipeline's UNet, then `refresh_fast_paths`; its result."""
    from svd_fast.accel import _STATE

    if "quantized" in (getattr(pipe, _STATE, None) or {}):
        raise ValueError("this pipeline's UNet is quantized: change its weights (LoRA adapters, motion modules) "
                         "before accelerate(quantize=...), or after svd_fast.restore(pipe)")
    result = change(plain_unet(pipe), *args, **kwargs)
    refresh_fast_paths(pipe)
    return result


def refresh_fast_paths(pipe) -> None:
    """After adapters change: drop what was derived from the old adapted weights.

    CUDA graphs recorded the old sequence of adapter ops (an adapter switched off would still run),
    so they are dropped and captured again; a compiled UNet (CPU freezing constant-folds weights)
    is compiled again, and dynamo's cache is cleared so it cannot hand back the old code. The
    Winograd weight cache (kernels/native/ops.py, keyed on a weight's version and storage) never
    goes stale with conv adapters: an active unfused adapter hands the kernel a fresh tensor
    (W + delta) on every call, whose cache entry dies with it, and fuse / unfuse put W into new
    storage (`_replace_base`). A quantized UNet holds int8 copies of its linears and convs: `edit`
    refuses adapters there (load and fuse them before accelerate(quantize=...)).
    """
    from svd_fast.accel.compile import CompiledModule, compile_unet
    from svd_fast.accel.graphs import GraphedModule

    owner, attr = pipe, "unet"
    if isinstance(pipe.unet, GraphedModule):
        pipe.unet.reset()
        owner, attr = pipe.unet, "module"
    inner = getattr(owner, attr)
    if isinstance(inner, CompiledModule):
        torch._dynamo.reset()
        setattr(owner, attr, compile_unet(inner.inner))
