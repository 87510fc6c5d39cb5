"""Exponential moving average of the trainable weights, also under ZeRO-3 partitioning.

The average is kept in fp32. Without parameter partitioning it mirrors each full parameter;
under ZeRO-3 each process averages only its own partition of every parameter (`param.ds_tensor`),
so the EMA costs 4 bytes per parameter divided by the world size, like the rest of ZeRO-3's state.
`full_state_dict` gathers the partitions (a collective call: every rank must make it).

Decay warm-up follows the common rule decay_t = min(decay, (1 + t) / (10 + t)), so early averages
are not dominated by the random initial weights.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _partitioned(param) -> bool:
    return hasattr(param, "ds_tensor")


class EMA:
    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params = named_params
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {name: self._local(p).detach().float().clone() for name, p in named_params.items()}

    @staticmethod
    def _local(param) -> torch.Tensor:
        """The part of the parameter this process holds (flat partition under ZeRO-3)."""
        return param.ds_tensor if _partitioned(param) else param.data

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, param in self.params.items():
            self.shadow[name].lerp_(self._local(param).float(), 1.0 - decay)
        self.num_updates += 1

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full-shape fp32 averages (on every rank), gathering ZeRO-3 partitions."""
        out = {}
        for name, param in self.params.items():
            shadow = self.shadow[name]
            if _partitioned(param):
                world = dist.get_world_size()
                parts = [torch.empty_like(shadow) for _ in range(world)]
                dist.all_gather(parts, shadow)
                out[name] = torch.cat(parts)[: param.ds_numel].reshape(param.ds_shape).cpu()
            else:
                out[name] = shadow.cpu().clone()
        return out

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore from full-shape averages (each rank keeps its own partition)."""
        missing = self.shadow.keys() - state.keys()
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} trainable weights, e.g. {sorted(missing)[:3]}")
        for name, param in self.params.items():
            value = state[name].float()
            if _partitioned(param):
                size = self.shadow[name].numel()
                flat = torch.zeros(size * dist.get_world_size())
                flat[: param.ds_numel] = value.flatten()
                rank = dist.get_rank()
                value = flat[rank * size : (rank + 1) * size]
            elif tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"EMA weight {name}: shape {tuple(value.shape)}, the model has {tuple(param.shape)}")
            self.shadow[name].copy_(value.reshape(self.shadow[name].shape))
        self.num_updates = num_updates

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.shadow.values())

