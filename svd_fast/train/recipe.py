"""A training run as plain Python dataclasses (a recipe file returns one `Recipe`).

Recipe files live in training/recipes/ and define `recipe() -> Recipe`; command-line overrides
(`--set optim.lr=3e-5 data.num_frames=8`) replace single fields. Parallelism, ZeRO stage and
offloading come from the DeepSpeed JSON; everything about the model, data and optimisation
comes from the recipe, and batch size / accumulation / clipping / precision are written into
the DeepSpeed config from here.
"""
from __future__ import annotations

import dataclasses
import json
import runpy
import typing
from dataclasses import dataclass, field
from pathlib import Path

from svd_fast.config import SVDConfig
from svd_fast.train.data import DataConfig
from svd_fast.train.distill import DistillConfig
from svd_fast.train.lora import LoRAConfig
from svd_fast.train.objective import ObjectiveConfig
from svd_fast.train.trainable import MODES

PRECISIONS = ("no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    """'adamw' (torch) or 'adamw8bit' (bitsandbytes; plain engine or DeepSpeed without ZeRO)"""
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    """linear learning-rate warm-up from 0 over this many optimizer steps"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this value (0: no clipping)"""


@dataclass(frozen=True)
class Recipe:
    name: str
    output_dir: str
    model: SVDConfig = field(default_factory=lambda: SVDConfig.from_name("tiny"))
    """architecture; must match `components` and `init_from` when those are given"""
    components: str | None = None
    """diffusers model folder providing the frozen VAE and image encoder (and the UNet when
    init_from is None); None builds them with random weights (tests only)"""
    init_from: str | None = None
    """previous stage: a run folder, a checkpoint folder, a model folder or a UNet .safetensors"""
    init_weights: str = "ema"
    """'ema' or 'model': which weights of a previous run's checkpoint to start from"""
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainable: str = "full"
    """'full', 'temporal', 'spatial' or 'lora' (svd_fast.train.trainable)"""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    batch_size: int = 1
    """clips per process per micro-step"""
    grad_accum: int = 1
    max_steps: int = 1000
    """optimizer steps"""
    seed: int = 0
    mixed_precision: str = "no"
    """'no', 'bf16' or 'fp16'"""
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    tensorboard: bool = False
    sample_every: int = 0
    """write a sample video every N steps (0: never)"""
    sample_steps: int = 8
    """sampler steps of those sample videos"""
    export_final: bool = True
    """write <output_dir>/final (a diffusers model folder) at the end"""
    distill: DistillConfig | None = None
    """consistency distillation of the init_from model into a few-step student (svd_fast.train.distill;
    the EMA, when ema_decay is set, is its target network); None: the diffusion objective"""

    def validate(self) -> None:
        self.data.validate()
        self.objective.validate()
        if self.trainable not in MODES:
            raise ValueError(f"recipe.trainable must be one of {MODES}, got {self.trainable!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"recipe.mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.optim.name not in OPTIMIZERS:
            raise ValueError(f"recipe.optim.name must be one of {OPTIMIZERS}, got {self.optim.name!r}")
        if self.init_weights not in ("ema", "model"):
            raise ValueError(f"recipe.init_weights must be 'ema' or 'model', got {self.init_weights!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"recipe.ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.trainable == "lora":
            self.lora.validate()
        if self.distill is not None:
            self.distill.validate()
            if not self.init_from:
                raise ValueError("recipe.distill: consistency distillation starts from a teacher; set recipe.init_from")
            if self.trainable == "lora":
                raise ValueError("recipe.distill: distil into 'full', 'temporal' or 'spatial' weights, not 'lora'")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def load_recipe(path) -> Recipe:
    """Run a recipe file and return the Recipe its `recipe()` function builds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--recipe {path}: no such file")
    if path.suffix != ".py":  # run_path would run any text as Python (a picture, a JSON config...)
        raise ValueError(f"--recipe {path}: a recipe is a Python file (.py) defining recipe() -> Recipe")
    namespace = runpy.run_path(str(path))
    factory = namespace.get("recipe")
    if not callable(factory):
        raise ValueError(f"--recipe {path}: the file must define a function recipe() -> Recipe")
    recipe = factory()
    if not isinstance(recipe, Recipe):
        raise ValueError(f"--recipe {path}: recipe() returned {type(recipe).__name__}, not a Recipe")
    return recipe


def _parse_value(text: str, current, hint, where: str):
    """Convert an override string to the type of the field it replaces."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {where}: expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        try:
            return type(current)(text) if not (isinstance(current, int) and "." in text) else float(text)
        except ValueError:
            raise ValueError(f"--set {where}: expected a number, got {text!r}") from None
    if isinstance(current, tuple):
        value = json.loads(text) if text.startswith("[") else text.split(",")
        kind = type(current[0]) if current else str
        return tuple(kind(v) for v in value)
    if current is None:
        if text.lower() == "none":
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text
    if text.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    return text


def apply_overrides(obj, assignments: list[str]):
    """Return a copy of a (nested) dataclass with `a.b.c=value` assignments applied."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set {assignment!r}: expected key=value")
        obj = _replace_path(obj, key.split("."), text, key)
    return obj


def _replace_path(obj, parts: list[str], text: str, where: str):
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"--set {where}: {type(obj).__name__} has no fields")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if parts[0] not in fields:
        raise ValueError(f"--set {where}: unknown field {parts[0]!r}; choose from {sorted(fields)}")
    current = getattr(obj, parts[0])
    if len(parts) == 1:
        hints = typing.get_type_hints(type(obj))
        value = _parse_value(text, current, hints.get(parts[0]), where)
    else:
        value = _replace_path(current, parts[1:], text, where)
    return dataclasses.replace(obj, **{parts[0]: value})
