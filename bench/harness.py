"""Measurement helpers shared by the benchmarks: timing, peak memory, machine facts, JSON output."""
from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from svd_fast.accel.memory import release_free_memory


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_repeats(fn, repeat: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeat` calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times), "all_s": times}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry while the block runs.

    GPU: torch.cuda.max_memory_allocated. CPU: resident set size sampled every 2 ms by a thread
    (ru_maxrss cannot be reset, and two models measured in one process need separate peaks).
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak_bytes = 0

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        release_free_memory()  # so RSS growth measures new peaks
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
            return False
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._peak, _rss_bytes()) - self._base
        return False


def gpu_info() -> dict | None:
    """GPU name, memory and clocks through NVML when present; None without a GPU or NVML."""
    if not torch.cuda.is_available():
        return None
    info = {"name": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability())}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        info["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        info["mem_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        info["memory_total_bytes"] = pynvml.nvmlDeviceGetMemoryInfo(handle).total
    except Exception as err:  # ImportError, NVMLError_LibraryNotFound, driver mismatch: report, carry on
        info["nvml"] = f"unavailable: {type(err).__name__}"
    return info


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty where it cannot be read)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def machine_info() -> dict:
    """Where a figure was measured: the CPU (model name, family and model numbers: virtual machines often
    name only the vendor, and Zen 4 and Zen 5 EPYCs differ 2-3x in bf16), its vector/matrix flags, the
    software, and the load."""
    cpu = _cpuinfo()
    flags = cpu.get("flags", "").split()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": cpu.get("model name") or platform.processor(),
        "cpu_family": cpu.get("cpu family"),
        "cpu_model_number": cpu.get("model"),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "sse4", "fma", "f16c"))),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": gpu_info(),
        # other work on the machine skews CPU timings: record it with every result
        "load_average": list(os.getloadavg()),
    }


def matmul_peak_tflops(dtype=torch.bfloat16, n: int | None = None, repeat: int = 5) -> float:
    """Measured dense matmul throughput of this device in `dtype` (the denominator for utilisation).
    n: the square size; 2048 on a CPU, 8192 on a GPU (smaller products leave a GPU's units idle)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = n or (8192 if device == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(time_repeats(lambda: a @ b, repeat, warmup=2))
    return 2 * n**3 / best / 1e12


def write_json(path, data: dict) -> Path:
    """Atomic JSON write (temp file + rename)."""
    from svd_fast.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
    return path


def recipe_module():
    """training/recipes/default_model.py as a module (held-out photos and procedural clips)."""
    if "default_model_recipe" in sys.modules:
        return sys.modules["default_model_recipe"]
    path = Path(__file__).resolve().parents[1] / "training" / "recipes" / "default_model.py"
    spec = importlib.util.spec_from_file_location("default_model_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up
    spec.loader.exec_module(module)
    return module
