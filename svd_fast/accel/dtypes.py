"""dtype "auto": the fastest exact-enough compute dtype for the device at hand, detected at run time.

CUDA: fp16 (bf16 when the checkpoint is stored in bf16). CPU: bf16 only where the CPU computes
it natively (AMX or AVX512-BF16): elsewhere oneDNN emulates bf16 and it runs ~3x slower than
fp32 (measured on AVX-512 + VNNI Xeons), so fp32.
"""
from __future__ import annotations

import functools
import platform

import torch

NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_reported: set = set()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def native_bf16_flags(flags=None) -> list[str]:
    """The native-bf16 features of this CPU (empty when it has none)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def resolve_dtype(spec, device="cpu", checkpoint_dtype: torch.dtype | None = None) -> tuple[torch.dtype, str]:
    """(dtype, why) for a dtype spec: a torch.dtype, 'fp32'/'bf16'/'fp16', or 'auto'/None."""
    if isinstance(spec, torch.dtype):
        return spec, "requested"
    if spec not in (None, "auto"):
        if spec not in NAMES:
            raise ValueError(f"unknown dtype {spec!r}; choose one of auto, {', '.join(NAMES)}")
        return NAMES[spec], "requested"
    device_type = torch.device(device).type if device is not None else "cpu"
    if device_type == "cuda":
        if checkpoint_dtype == torch.bfloat16:
            return torch.bfloat16, "CUDA, checkpoint stored in bf16"
        return torch.float16, "CUDA: fp16 tensor cores"
    if device_type != "cpu":
        return torch.float32, f"{device_type}: no measured low-precision path"
    native = native_bf16_flags()
    if native:
        return torch.bfloat16, f"{cpu_model()} computes bf16 natively ({', '.join(native)})"
    return torch.float32, f"{cpu_model()} has no native bf16 (no amx_bf16/avx512_bf16): bf16 would be emulated, fp32 is faster"


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in NAMES.items()}.get(dtype, str(dtype))


def report_once(dtype: torch.dtype, why: str, printer=print) -> None:
    """Say once per process which dtype 'auto' chose and why."""
    key = (dtype, why)
    if key not in _reported:
        _reported.add(key)
        printer(f"dtype auto -> {dtype_name(dtype)}: {why}")
