"""Training engines: DeepSpeed (ZeRO 0-3, offload, bf16/fp16) and a plain PyTorch fallback.

Both run the same micro-step protocol for the trainer:
    loss = engine.forward_backward(inputs, last_micro)  # every micro-batch
    grad_norm = engine.optimizer_step()                 # after the last micro-batch of a step
and expose the weights and optimizer state per parameter in full shape (gathered from ZeRO
partitions), so checkpoints do not depend on the world size or the ZeRO stage.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from svd_fast.layers import channels_last_
from svd_fast.train.recipe import Recipe

ADAM_STATE_KEYS = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0  # DeepSpeed's default; torch's gloo default is 30 minutes


class PeerFailure(RuntimeError):
    """A collective operation failed: another process of the run crashed, was killed or hung."""


def is_collective_failure(err: BaseException) -> bool:
    """True for the errors torch.distributed raises when a peer dies (gloo: "Connection closed by
    peer") or stops answering (a timeout). NCCL's are DistBackendErrors; gloo raises plain
    RuntimeErrors naming its TCP transport."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        marker in text for marker in ("gloo/transport/", "Connection closed by peer", "Connection reset by peer",
                                      "Timed out waiting"))


def init_distributed(use_deepspeed: bool, timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> DistEnv:
    """Join the process group set up by torchrun / the deepspeed launcher (or a single process).

    Every collective fails after `timeout_s` seconds without progress (the watchdog against a
    hung peer; a dead peer's closed connection fails it at once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if use_deepspeed:
        # A single process started without a launcher still needs a (one-member) process group.
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    elif world > 1 and not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    return DistEnv(rank, world, local_rank, device)


def build_optimizer(params: list, recipe: Recipe) -> torch.optim.Optimizer:
    opt = recipe.optim
    if opt.name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    # The fused kernel updates every tensor in one call per dtype; the default per-tensor loop on CPU
    # costs about a fifth of a small model's step in dispatch alone.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay, fused=fused)


def _autocast_dtype(precision: str):
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class PlainEngine:
    """PyTorch loop: autocast mixed precision, DDP when world_size > 1, gradient accumulation."""

    zero_stage = None

    def __init__(self, model: nn.Module, recipe: Recipe, env: DistEnv):
        self.env, self.recipe = env, recipe
        # Conv weights in channels-last order like the activations, else every conv reorders its weight
        # (DeepSpeed's engine below cannot partition such parameters, so only this engine does it).
        self.module = channels_last_(model.to(env.device))
        self.named_params = dict(model.named_parameters())
        self.trainable = {n: p for n, p in self.named_params.items() if p.requires_grad}
        # Some weights never get a gradient (to_q/to_k of single-token cross-attention are dead
        # code, see svd_facts 1.9), so DDP must not wait for them.
        self.wrapped = (
            nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                                                find_unused_parameters=True)
            if env.world_size > 1 else model
        )
        self.optimizer = build_optimizer(list(self.trainable.values()), recipe)
        self.autocast = _autocast_dtype(recipe.mixed_precision)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=recipe.mixed_precision == "fp16")

    def forward_backward(self, inputs: dict, last_micro: bool) -> torch.Tensor:
        sync = contextlib.nullcontext() if last_micro or self.env.world_size == 1 else self.wrapped.no_sync()
        autocast = torch.autocast(self.env.device.type, dtype=self.autocast, enabled=self.autocast is not None)
        with sync:
            with autocast:
                loss = self.wrapped(**inputs).mean()
            self.scaler.scale(loss / self.recipe.grad_accum).backward()
        return loss.detach()

    def optimizer_step(self) -> float:
        self.scaler.unscale_(self.optimizer)
        clip = self.recipe.optim.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # Full-shape views for checkpoints (no partitioning here).
    def gathered(self):
        return contextlib.nullcontext()

    def full_param(self, name: str) -> torch.Tensor:
        return self.named_params[name].detach().float().cpu()

    def restore_master_weights(self, state: dict[str, torch.Tensor]) -> None:
        """The parameters are the master weights here; they were loaded before the engine was built."""

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """({'<param>::<key>': full tensor}, {'step': int}) of the optimizer."""
        tensors, step = {}, 0
        for name, param in self.trainable.items():
            for key, value in self.optimizer.state.get(param, {}).items():
                if key == "step":
                    step = int(value)
                elif torch.is_tensor(value):
                    tensors[f"{name}::{key}"] = value.detach().cpu().clone()  # bitsandbytes shares its qmaps
        return tensors, {"step": step}

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        for name, param in self.trainable.items():
            prefix = f"{name}::"
            state = {k[len(prefix):]: v.to(param.device) for k, v in tensors.items() if k.startswith(prefix)}
            if not state:
                continue  # never had a gradient (e.g. to_q/to_k of single-token cross-attention): no state yet
            # torch AdamW keeps `step` as a float tensor, bitsandbytes as an int.
            if isinstance(self.optimizer, torch.optim.AdamW):  # the fused kernel wants it on the parameter's device
                fused = self.optimizer.defaults.get("fused")
                state["step"] = torch.tensor(float(meta["step"]), dtype=torch.float32, device=param.device if fused else "cpu")
            else:
                state["step"] = int(meta["step"])
            self.optimizer.state[param] = state


class DeepSpeedEngine:
    """deepspeed.initialize around the objective module; ZeRO stage and precision from the JSON."""

    def __init__(self, model: nn.Module, recipe: Recipe, env: DistEnv, ds_config: dict):
        import deepspeed

        self.env, self.recipe = env, recipe
        self.module = model
        self.named_params = dict(model.named_parameters())
        self.trainable = {n: p for n, p in self.named_params.items() if p.requires_grad}
        self.zero_stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        if recipe.optim.name == "adamw8bit" and (self.zero_stage > 0 or recipe.mixed_precision != "no"):
            raise ValueError("optim.name='adamw8bit' works with the plain engine or DeepSpeed ZeRO stage 0 in fp32; "
                             "use 'adamw' with ZeRO stages 1-3 or bf16/fp16")
        fill_auto_buckets(ds_config, [p.numel() for p in self.trainable.values()])
        client = None if "optimizer" in ds_config else build_optimizer(list(self.trainable.values()), recipe)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=list(self.trainable.values()), optimizer=client, config=ds_config
        )
        if self.zero_stage == 3:
            _drop_zero3_hooks_of_parameterless_containers(model)

    def forward_backward(self, inputs: dict, last_micro: bool) -> torch.Tensor:
        loss = self.engine(**inputs).mean()
        self.engine.backward(loss)
        if not last_micro:
            self.engine.step()  # only advances DeepSpeed's micro-step counter
        return loss.detach()

    def optimizer_step(self) -> float:
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed's accumulation counter disagrees with the trainer's: check "
                               "gradient_accumulation_steps in the DeepSpeed config")
        # Without ZeRO or a mixed-precision optimizer DeepSpeed reports no norm: measure it here,
        # where the (already averaged) gradients are still on the parameters.
        plain = [p.grad for p in self.trainable.values() if p.grad is not None] if self.zero_stage == 0 else []
        own_norm = float(torch.nn.utils.get_total_norm(plain)) if plain else None
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else own_norm if own_norm is not None else float("nan")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def gathered(self):
        """Context in which every rank holds full parameters (ZeRO-3 gathers them)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)

    def full_param(self, name: str) -> torch.Tensor:
        """fp32 master value of a parameter in full shape (collective under ZeRO: call on all ranks)."""
        from deepspeed.utils import safe_get_full_fp32_param

        param = self.named_params[name]
        value = safe_get_full_fp32_param(param) if param.requires_grad else None
        if value is None:
            with self.gathered():
                value = param.detach().clone()
        return value.float().cpu()

    def restore_master_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Set the fp32 master copies of the trainable weights exactly (the module's low-precision
        weights were loaded before deepspeed.initialize and are their rounding)."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_local_fp32_param

        for name, param in self.trainable.items():
            value = state[name].to(self.env.device).float()
            if _zero3_partitioned(param):
                safe_set_local_fp32_param(param, _local_partition(param, value))
            elif _has_master(param):
                safe_set_full_fp32_param(param, value)

    def _base_optimizer(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _optimized_tensors(self) -> list[torch.Tensor]:
        """The tensors the base optimizer keeps state for: ZeRO-3's flat fp32 partitions (which it
        puts into param_groups only while stepping), otherwise its param_groups' tensors."""
        flat = getattr(self.optimizer, "fp32_partitioned_groups_flat", None)
        if flat is not None:
            return list(flat)
        return [p for group in self._base_optimizer().param_groups for p in group["params"]]

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        from deepspeed.utils import safe_get_full_optimizer_state

        tensors = {}
        for name, param in self.trainable.items():
            for key in ADAM_STATE_KEYS:
                value = safe_get_full_optimizer_state(param, key)
                if value is None:  # ZeRO stage 0 in fp32: the client optimizer holds the parameter itself
                    value = self._base_optimizer().state[param][key]
                tensors[f"{name}::{key}"] = value.detach().float().cpu()
        steps = [int(s["step"]) for s in self._base_optimizer().state.values() if "step" in s]
        return tensors, {"step": max(steps, default=0)}

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state, safe_set_local_optimizer_state

        base = self._base_optimizer()
        for p in self._optimized_tensors():  # DeepSpeed creates Adam's state lazily, at the first step
            for key in ADAM_STATE_KEYS:
                base.state[p].setdefault(key, torch.zeros_like(p, dtype=torch.float32))
        link = getattr(self.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:  # ZeRO-1/2 and bf16: map each parameter onto the fresh state fragments
            link()
        for name, param in self.trainable.items():
            for key in ADAM_STATE_KEYS:
                value = tensors.get(f"{name}::{key}")
                if value is None:
                    raise ValueError(f"optimizer state lacks {name}::{key}")
                value = value.to(self.env.device)
                if _zero3_partitioned(param):
                    safe_set_local_optimizer_state(param, _local_partition(param, value), key)
                elif _has_master(param):
                    safe_set_full_optimizer_state(param, value, key)
                else:
                    base.state.setdefault(param, {})[key] = value.clone()
        for p in self._optimized_tensors():
            state = base.state[p]
            old = state.get("step")
            state["step"] = torch.tensor(float(meta["step"])) if old is None or torch.is_tensor(old) else int(meta["step"])


AUTO_BUCKETS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size")


def auto_bucket_values(numels: list[int]) -> dict[str, int]:
    """DeepSpeed bucket sizes scaled to the model (as HF's "auto" derives them from the hidden size):
    a tenth of the trainable elements (at least the largest tensor, at most DeepSpeed's 5e8, rounded
    up to a multiple of 256), and a persistence threshold of 10 x the side of the largest weight matrix."""
    total, largest = sum(numels), max(numels)
    bucket = -(-int(min(5e8, max(largest, total // 10))) // 256) * 256  # DeepSpeed wants aligned sizes
    return {**{key: bucket for key in AUTO_BUCKETS}, "stage3_param_persistence_threshold": int(10 * math.sqrt(largest))}


def fill_auto_buckets(ds_config: dict, numels: list[int]) -> None:
    """Replace "auto" bucket settings of zero_optimization with auto_bucket_values."""
    zero = ds_config.get("zero_optimization", {})
    for key, value in auto_bucket_values(numels).items():
        if zero.get(key) == "auto":
            zero[key] = value


def _has_master(param) -> bool:
    """True when DeepSpeed keeps a separate fp32 master copy of the parameter (ZeRO or bf16/fp16)."""
    return hasattr(param, "ds_id") or getattr(param, "_hp_mapping", None) is not None


def _zero3_partitioned(param) -> bool:
    return hasattr(param, "ds_id") and hasattr(param, "ds_tensor")


def _local_partition(param, value: torch.Tensor) -> torch.Tensor:
    """This rank's ZeRO-3 partition of a full-shape value: the flat value zero-padded to
    world x partition size, then this rank's slice. (DeepSpeed's safe_set_full_* setters slice
    without the padding, so they fail on the last ranks for a weight with fewer elements than
    ranks, e.g. a 1-element mix factor on 2 processes; the local setters do not.)"""
    size = param.ds_tensor.numel()
    world, rank = dist.get_world_size(), dist.get_rank()
    flat = torch.zeros(size * world, dtype=torch.float32, device=value.device)
    flat[: value.numel()] = value.flatten().float()
    return flat[rank * size : (rank + 1) * size]


def _drop_zero3_hooks_of_parameterless_containers(model: nn.Module) -> None:
    """Remove ZeRO-3's input-wrapping pre-forward hook from modules that own no parameters.

    ZeRO-3 wraps every module's tensor inputs to track backward; for list arguments it builds a
    new list, which breaks the UNet's down/up blocks that push and pop skip connections on a list
    passed to them. For a module without parameters of its own the hook has nothing to fetch or
    release, so removing it changes nothing else (its children keep their hooks).
    """
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            continue
        for key, hook in list(module._forward_pre_hooks.items()):
            if getattr(hook, "__name__", "") == "_post_backward_module_hook":
                del module._forward_pre_hooks[key]


def resolve_deepspeed_config(path, recipe: Recipe, world_size: int) -> dict:
    """Read a DeepSpeed JSON and fill batch size, accumulation, clipping and precision from the recipe.

    Values may be omitted or "auto"; an explicit value that disagrees with the recipe is an error
    naming the file and key (one source of truth per setting).
    """
    try:
        with open(path) as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"--deepspeed {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--deepspeed {path}: invalid JSON ({err})") from None
    if "scheduler" in config:
        raise ValueError(f"--deepspeed {path}: remove the 'scheduler' section; the recipe's optim.warmup_steps sets the schedule")

    def fill(section: dict, key: str, value, where: str):
        current = section.get(key, "auto")
        if current != "auto" and current != value:
            raise ValueError(f"--deepspeed {path}: {where}={current!r} disagrees with the recipe ({value!r}); "
                             f"set it to \"auto\" or change the recipe")
        section[key] = value

    fill(config, "train_micro_batch_size_per_gpu", recipe.batch_size, "train_micro_batch_size_per_gpu")
    fill(config, "gradient_accumulation_steps", recipe.grad_accum, "gradient_accumulation_steps")
    fill(config, "train_batch_size", recipe.batch_size * recipe.grad_accum * world_size, "train_batch_size")
    fill(config, "gradient_clipping", float(recipe.optim.grad_clip), "gradient_clipping")
    for precision in ("bf16", "fp16"):
        section = config.setdefault(precision, {})
        fill(section, "enabled", recipe.mixed_precision == precision, f"{precision}.enabled")
    if "optimizer" in config:
        params = config["optimizer"].setdefault("params", {})
        for key, value in (("lr", recipe.optim.lr), ("weight_decay", recipe.optim.weight_decay),
                           ("betas", list(recipe.optim.betas)), ("eps", recipe.optim.eps)):
            fill(params, key, value, f"optimizer.params.{key}")
    config.setdefault("steps_per_print", 10**9)  # the trainer logs; keep DeepSpeed quiet
    return config
