"""Measured kernel choice for backend "auto": time the candidates once per call signature, keep the fastest.

The first call of an op with a new signature (device, shapes, dtypes, layouts of the tensors and
the int/bool arguments such as num_frames, heads or silu; float arguments like eps do not change
the speed and are not part of it) times every implementation available for that device on the
call's own inputs: one warm-up call each, then round-robin repeats (about BUDGET_S per candidate,
MIN_REPEATS to MAX_REPEATS; one for calls over LONG_CALL_S), forward only, under no_grad, min
time. On CPU a sample during which the thread did not have the CPU (other load, nice) is retried;
a choice timed only in such samples serves the process but is not cached. The winner serves every
later call of that signature from an in-memory dict (a lookup of a few microseconds). A candidate
within TIE_MARGIN of the fastest that comes earlier in the starting order (AUTO_CHOICES) is kept
instead, so timer noise does not flip choices. Every candidate supports autograd, so a winner
chosen under no_grad also serves calls that need gradients.

Choices persist in `$SVD_FAST_CACHE_DIR/kernel_choices.json` (default ~/.cache/svd_fast), one
section per machine key (CPU model and thread count or GPU name, torch and svd_fast versions, and a
fingerprint of the kernel sources and native library, so a rebuilt kernel is timed again),
written atomically (temporary file + os.replace) after merging with what is on disk, so parallel
processes add to each other's entries. An unreadable or malformed file is ignored with one warning
and rewritten by the next measurement. An entry serves only while the candidates it timed still
include every candidate available now (building the native extension later re-measures).

Nothing is timed while torch.compile traces (with static sizes the choice cached for the call's
signature is baked into the graph, else the starting order), during CUDA-graph capture, under a
TorchDispatchMode (FakeTensorMode, FlopCounterMode: extra calls would be counted) or for tensor
subclasses. SVD_FAST_TUNE=0 turns measuring off: the starting order, ignoring the cache; it is
off by default in processes of a multi-process (torch.distributed) run, SVD_FAST_TUNE=1 turns it on.

    tuning.measured()   # this machine's entries (what `python -m svd_fast.kernels --list` prints)
    tuning.clear()      # forget every choice, on disk and in this process
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.util
import json
import os
import platform
import threading
import time
import warnings
import weakref
from pathlib import Path

import torch

CACHE_FILE = "kernel_choices.json"
FORMAT = 1
# Timing per candidate and new signature: repeats until they took about BUDGET_S, between these
# bounds (one repeat when the warm-up call alone took LONG_CALL_S: big shapes are timed, not benchmarked).
BUDGET_S = 0.02
MIN_REPEATS, MAX_REPEATS = 2, 25
LONG_CALL_S = 0.1
# A CPU sample counts only if the calling thread ran for most of it (its CPU time >= this share of
# the wall time; it works or spins at the OpenMP barriers for the whole of an undisturbed call):
# otherwise it timed the scheduler, not the kernel (a loaded or niced machine). The process's CPU
# time would miss it: idle OpenMP workers spin while the calling thread waits to be scheduled.
# Starved samples are retried, up to MAX_ATTEMPTS calls or STARVED_CAP_S per candidate; a choice
# with no clean sample of some candidate serves this process but is not written to the cache.
CLEAN_CPU_SHARE = 0.8
MAX_ATTEMPTS, STARVED_CAP_S = 4 * MAX_REPEATS, 10 * BUDGET_S
# A candidate earlier in the starting order stays chosen unless another is faster by more than this.
TIE_MARGIN = 0.03
# The file keeps the newest entries of the newest machine sections (a section per machine, thread
# count and torch/svd_fast version; old versions' sections would otherwise pile up).
MAX_ENTRIES, MAX_SECTIONS = 2000, 8
# Stands for a float argument (eps): part of no signature.
UNKEYED = "*"

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
_lock = threading.RLock()
_live_ops: "weakref.WeakValueDictionary[int, TunedOp]" = weakref.WeakValueDictionary()
_warned: set = set()
measurements = 0  # signatures timed by this process (tests check that a warm cache times none)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def tuning_enabled() -> bool:
    flag = os.environ.get("SVD_FAST_TUNE")
    if flag is not None:
        return flag != "0"
    # The ranks of a multi-process run must compute alike: timed in each process, they can pick
    # different kernels for the same call, and the run then diverges between ranks (measured: 1e-7
    # at step 2, 1.5% in gradient norm at step 6 of a 2-process ZeRO-3 run). Such runs use the
    # starting order unless SVD_FAST_TUNE=1 asks otherwise.
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def cache_path() -> Path:
    root = os.environ.get("SVD_FAST_CACHE_DIR") or Path.home() / ".cache" / "svd_fast"
    return Path(root) / CACHE_FILE


# ---- call signatures (the hot path: plain tuples, no string formatting) ----


def _layout(t: torch.Tensor):
    """'' for contiguous, 'cl' for 4-D channels-last, else the strides."""
    if t.is_contiguous():
        return ""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "cl"
    return tuple(t.stride())


def signature(args: tuple, kwargs: dict) -> tuple:
    """Hashable key of a call: shape, dtype and layout of each tensor; ints, bools and None as they are.
    Runs on every call of a tuned op, so it is written for speed (about 1 us per tensor)."""
    key = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.shape, a.dtype, _layout(a)))
        else:
            key.append(UNKEYED if isinstance(a, float) else a)
    for name in sorted(kwargs):
        a = kwargs[name]
        key.append((name, (a.shape, a.dtype, _layout(a)) if isinstance(a, torch.Tensor)
                    else UNKEYED if isinstance(a, float) else a))
    return tuple(key)


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _arg_text(part) -> str:
    if isinstance(part, tuple) and len(part) == 3 and isinstance(part[1], torch.dtype):
        shape, dtype, layout = part
        layout = layout if isinstance(layout, str) else "strides(" + ",".join(map(str, layout)) + ")"
        return f"{_dtype_name(dtype)}[{','.join(map(str, shape))}]{layout}"
    if isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], str):  # keyword argument
        return f"{part[0]}={_arg_text(part[1])}"
    return repr(part) if part != UNKEYED else UNKEYED


def signature_text(sig: tuple) -> str:
    """e.g. 'bf16[28,320,16,16]cl, 32, bf16[320], bf16[320], *, True, 14' (cl: channels-last)."""
    return ", ".join(_arg_text(p) for p in sig)


def _first_dtype(sig: tuple) -> str:
    for part in sig:
        if isinstance(part, tuple) and len(part) == 3 and isinstance(part[1], torch.dtype):
            return _dtype_name(part[1])
    return "-"


# ---- machine keys ----


@functools.cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def fingerprint(paths) -> str:
    """Short hash of the names, sizes and modification times of files (missing ones count as absent)."""
    digest = hashlib.sha256()
    for path in sorted(map(str, paths)):
        try:
            stat = os.stat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}:absent\n".encode())
    return digest.hexdigest()[:10]


def kernel_files() -> list:
    """The sources of every candidate (this package's Python files) and the native extension: a
    rebuilt or edited kernel must be timed again, even at the same svd_fast version."""
    here = Path(__file__).resolve().parent
    files = [f for f in (*here.glob("*.py"), *here.glob("native/*.py")) if f.name not in ("__main__.py", "build.py")]
    try:
        spec = importlib.util.find_spec("svd_fast._C")  # locates the built library without loading it
    except ImportError:
        spec = None
    if spec is not None and spec.origin:
        files.append(Path(spec.origin))
    return files


@functools.cache
def _versions() -> str:
    try:
        from svd_fast import __version__ as version
    except ImportError:
        version = "unknown"
    return f"torch {torch.__version__} | svd_fast {version} | kernels {fingerprint(kernel_files())}"


def machine_key(device: torch.device) -> str:
    """What the measurements of `device` depend on besides the call: hardware, threads, versions."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} | {_versions()}"
    return f"{cpu_model()}, {torch.get_num_threads()} threads | {_versions()}"


def entry_key(op: str, device_type: str, sig: tuple) -> str:
    return f"{op} {device_type} ({signature_text(sig)})"


# ---- the on-disk cache ----


def _valid_entry(entry) -> bool:
    text_fields = ("winner", "op", "device", "args")
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in text_fields):
        return False
    times = entry.get("times_ms")
    if not isinstance(times, dict) or entry["winner"] not in times:
        return False
    values = (*times.values(), entry.get("cost_ms", 0))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    failed = entry.get("failed", {})
    return numbers and isinstance(failed, dict) and all(isinstance(k, str) for k in (*times, *failed))


def _read(path: Path) -> dict:
    """{machine: {entry key: entry}} from the file; {} (warned once) if it is missing, unreadable or malformed."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        _warn_once(f"read {path}", f"svd_fast.kernels: ignoring the kernel choice cache {path} ({err}); "
                                   "it will be rewritten")
        return {}
    machines = data.get("machines") if isinstance(data, dict) else None
    if not isinstance(machines, dict) or data.get("format") != FORMAT:
        _warn_once(f"read {path}", f"svd_fast.kernels: ignoring the kernel choice cache {path} (not a format "
                                   f"{FORMAT} kernel choice file); it will be rewritten")
        return {}
    out, dropped = {}, 0
    for machine, entries in machines.items():
        if not isinstance(entries, dict):
            dropped += 1
            continue
        good = {k: e for k, e in entries.items() if _valid_entry(e)}
        dropped += len(entries) - len(good)
        out[machine] = good
    if dropped:
        _warn_once(f"read {path}", f"svd_fast.kernels: ignoring {dropped} malformed entries of the kernel choice "
                                   f"cache {path}; they will be rewritten")
    return out


def _newest(entries: dict, keep: int) -> dict:
    """The `keep` most recently measured of {key: entry}."""
    if len(entries) <= keep:
        return entries
    return dict(sorted(entries.items(), key=lambda kv: str(kv[1].get("measured", "")))[-keep:])


def _pruned(machines: dict) -> dict:
    latest = {m: max((str(e.get("measured", "")) for e in entries.values()), default="")
              for m, entries in machines.items()}
    sections = sorted(machines, key=latest.get)[-MAX_SECTIONS:]
    return {m: _newest(machines[m], MAX_ENTRIES) for m in sections}


def _write(path: Path, machines: dict) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    from svd_fast.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "machines": machines}, indent=1, sort_keys=True))


class _Store:
    """This process's view of the cache file: loaded on first use (and again if the path changes)."""

    def __init__(self):
        self.path: Path | None = None
        self.machines: dict = {}

    def _current(self) -> dict:
        path = cache_path()
        if path != self.path:
            self.path, self.machines = path, _read(path)
        return self.machines

    def get(self, machine: str, key: str):
        return self._current().get(machine, {}).get(key)

    def section(self, machine: str) -> dict:
        return dict(self._current().get(machine, {}))

    def all(self) -> dict:
        return {m: dict(e) for m, e in self._current().items()}

    def put(self, machine: str, key: str, entry: dict) -> None:
        self._current().setdefault(machine, {})[key] = entry
        try:
            merged = _read(self.path)  # entries other processes wrote since we loaded
            for m, entries in self.machines.items():
                merged.setdefault(m, {}).update(entries)
            merged = _pruned(merged)
            _write(self.path, merged)
            self.machines = merged
        except OSError as err:
            _warn_once(f"write {self.path}", f"svd_fast.kernels: cannot write the kernel choice cache {self.path} "
                                             f"({err}); choices are kept for this process only")


_store = _Store()


def measured(device_type: str | None = None, machine: str | None = None) -> dict:
    """{entry key: entry} of one machine section (default: this CPU, or the first GPU for 'cuda')."""
    if machine is None:
        machine = machine_key(torch.device(device_type or "cpu"))
    with _lock:
        entries = _store.section(machine)
    return {k: e for k, e in entries.items() if device_type is None or e.get("device") == device_type}


def cached_machines() -> dict:
    """{machine key: number of entries} of everything in the cache file."""
    with _lock:
        return {m: len(e) for m, e in _store.all().items()}


def reload() -> None:
    """Forget the choices held in this process; the next call of each signature reads the cache file again."""
    global _store
    with _lock:
        _store = _Store()
        for op in list(_live_ops.values()):
            op.forget()


def clear() -> None:
    """Forget every measured choice: delete the cache file and what this process holds."""
    with _lock:
        cache_path().unlink(missing_ok=True)
        reload()


# ---- measuring ----


def _timeable(device: torch.device, args: tuple, kwargs: dict) -> bool:
    """False where extra calls would be wrong or meaningless: CUDA-graph capture, dispatch modes
    (FakeTensorMode, FlopCounterMode), tensor subclasses."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    if torch._C._len_torch_dispatch_stack() > 0:  # private, but the only way to see an active dispatch mode
        return False
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)


def _timer(device: torch.device):
    if device.type == "cuda":
        def now():
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.perf_counter


class _Samples:
    """One candidate's timings: min over clean samples (the thread had the CPU), attempts, time spent."""

    def __init__(self, warmup_s: float):
        self.long = warmup_s >= LONG_CALL_S
        self.best = self.best_any = float("inf")
        self.clean = self.attempts = 0
        self.spent = 0.0

    def add(self, wall: float, cpu: float | None) -> None:
        self.attempts += 1
        self.spent += wall
        self.best_any = min(self.best_any, wall)
        if cpu is None or cpu >= CLEAN_CPU_SHARE * wall:
            self.clean += 1
            self.best = min(self.best, wall)

    def more(self) -> bool:
        if self.long:
            return self.clean < 1 and self.attempts < 3
        if self.clean < MIN_REPEATS:
            return self.attempts < MAX_ATTEMPTS and self.spent < STARVED_CAP_S
        return self.clean < MAX_REPEATS and self.spent < BUDGET_S

    def result(self) -> tuple[float, bool]:
        """(min seconds, whether it comes from clean samples)."""
        return (self.best, True) if self.clean else (self.best_any, False)


def measure(candidates: list, args: tuple, kwargs: dict, device: torch.device) -> tuple[dict, dict, int, bool]:
    """({name: min seconds}, {name: error of a candidate that raised}, most samples, every time clean)
    of candidates [(name, fn)]."""
    now = _timer(device)
    cpu_clock = time.thread_time if device.type == "cpu" else None  # a GPU sync may sleep: no check
    failed, samples = {}, {}
    fns = dict(candidates)
    with torch.no_grad():
        for name, fn in candidates:  # warm-up: lazy initialisation, JIT compiles, oneDNN primitive caches
            try:
                start = now()
                fn(*args, **kwargs)
                samples[name] = _Samples(now() - start)
            except Exception as err:  # a candidate that cannot take this call is not a choice
                failed[name] = f"{type(err).__name__}: {err}"[:200]
        active = [n for n in samples if samples[n].more()]
        while active:  # round-robin: load changes hit every candidate alike
            for name in active:
                cpu0 = cpu_clock() if cpu_clock else 0.0
                start = now()
                fns[name](*args, **kwargs)
                wall = now() - start
                samples[name].add(wall, cpu_clock() - cpu0 if cpu_clock else None)
            active = [n for n in active if samples[n].more()]
    results = {n: s.result() for n, s in samples.items()}
    times = {n: t for n, (t, _) in results.items()}
    repeats = max((s.attempts for s in samples.values()), default=0)
    return times, failed, repeats, all(clean for _, clean in results.values())


def pick_winner(order: list[str], times: dict) -> str:
    """Fastest of times; a candidate earlier in `order` within TIE_MARGIN of it wins instead."""
    fastest = min(times.values())
    return next(n for n in order if n in times and times[n] <= fastest * (1 + TIE_MARGIN))


# ---- the dispatcher ----


def assume_constant_result(fn):
    """torch.compiler.assume_constant_result without its import of torch._dynamo (1.8 s, in every
    process that loads a model, compiled or not): torch's decorator only sets this attribute, which
    dynamo reads when it traces a call (tests/kernels/test_tuning.py checks it against torch's)."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result
def _trace_has_no_symbols() -> bool:
    """True while torch.compile traces with static sizes only. Dynamo reports symbolic sizes as ints,
    and a signature holding one cannot be passed to _untimed_choice, so this asks the trace's shape
    environment (symbols of the inputs and of data-dependent sizes exist before any op uses them)."""
    from torch._guards import TracingContext

    context = TracingContext.try_get()
    shape_env = context.fake_mode.shape_env if context is not None and context.fake_mode is not None else None
    return shape_env is None or not shape_env.var_to_range


@assume_constant_result
def _untimed_choice(token: int, device: torch.device, sig: tuple) -> str:
    """The choice without timing (torch.compile tracing): this process's, the cache's or the starting
    order's. Evaluated once at trace time and baked into the graph, with no guard on the caches."""
    return _live_ops[token].untimed_choice(device, sig)


class TunedOp:
    """One op of backend "auto": candidates per device type [(name, fn)] in starting order; devices
    without candidates use `fallback`. Call it like the op."""

    _next_token = 0

    def __init__(self, op: str, candidates: dict, fallback):
        self.op = op
        self.fallback = fallback  # devices without candidates (meta, ...)
        self.candidates = {d: list(c) for d, c in candidates.items() if c}
        self.options = {d: dict(c) for d, c in self.candidates.items()}
        self._memo: dict = {}        # (device, signature) -> fn: the hot path
        self._memo_names: dict = {}  # (device, signature) -> name
        with _lock:
            TunedOp._next_token += 1
            self.token = TunedOp._next_token
            _live_ops[self.token] = self

    def forget(self) -> None:
        self._memo.clear()
        self._memo_names.clear()

    def static(self, device_type: str) -> str:
        return self.candidates[device_type][0][0]

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return self._traced(args, kwargs)
        key = (args[0].device, signature(args, kwargs))
        fn = self._memo.get(key)
        if fn is None:
            fn = self._choose(key, args, kwargs)
        return fn(*args, **kwargs)

    def _traced(self, args: tuple, kwargs: dict):
        device = args[0].device
        options = self.options.get(device.type)
        if options is None:
            return self.fallback(*args, **kwargs)
        if len(options) == 1 or not _trace_has_no_symbols():  # symbolic sizes cannot key a lookup
            return self.candidates[device.type][0][1](*args, **kwargs)
        return options[_untimed_choice(self.token, device, signature(args, kwargs))](*args, **kwargs)

    def _cached(self, device: torch.device, sig: tuple):
        """The winner of the cache entry for this call, if it timed every candidate available now."""
        entry = _store.get(machine_key(device), entry_key(self.op, device.type, sig))
        if entry is None:
            return None
        timed = set(entry["times_ms"]) | set(entry.get("failed", {}))
        names = self.options[device.type]
        return entry["winner"] if entry["winner"] in names and timed >= set(names) else None

    def untimed_choice(self, device: torch.device, sig: tuple) -> str:
        with _lock:
            name = self._memo_names.get((device, sig))
            if name is None and tuning_enabled():
                name = self._cached(device, sig)
        return name or self.static(device.type)

    def _choose(self, key: tuple, args: tuple, kwargs: dict):
        global measurements
        device, sig = key
        options = self.options.get(device.type)
        if options is None or len(options) == 1:
            fn = self.fallback if options is None else self.candidates[device.type][0][1]
            if options is not None:
                self._memo_names[key] = self.static(device.type)  # the only candidate: nothing to time
            self._memo[key] = fn
            return fn
        with _lock:
            if key in self._memo:
                return self._memo[key]
            name = None
            if tuning_enabled():
                name = self._cached(device, sig)
                if name is None:
                    if not _timeable(device, args, kwargs):
                        return options[self.static(device.type)]  # not memoised: timed at a later call
                    name = self._measure(device, sig, args, kwargs)
                    measurements += 1
            name = name or self.static(device.type)
            self._memo_names[key] = name
            self._memo[key] = options[name]
            return self._memo[key]

    def _measure(self, device, sig, args, kwargs) -> str | None:
        candidates = self.candidates[device.type]
        start = time.perf_counter()
        times, failed, repeats, clean = measure(candidates, args, kwargs, device)
        cost = time.perf_counter() - start
        if not times:
            return None  # every candidate raised: the starting choice will raise the caller's error
        winner = pick_winner([n for n, _ in candidates], times)
        if not clean:
            return winner  # timed while starved of CPU: good enough for now, not worth keeping
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        entry = {"op": self.op, "device": device.type, "dtype": _first_dtype(sig), "args": signature_text(sig),
                 "times_ms": {n: round(t * 1e3, 6) for n, t in times.items()}, "winner": winner,
                 "repeats": repeats, "cost_ms": round(cost * 1e3, 3), "measured": when}
        if failed:
            entry["failed"] = failed
        _store.put(machine_key(device), entry_key(self.op, device.type, sig), entry)
        return winner
