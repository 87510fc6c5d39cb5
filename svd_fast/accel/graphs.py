"""CUDA-graph replay of the UNet step: capture once per input signature, replay afterwards.

A sampler calls the UNet 25-50 times with inputs of one shape; launching its ~thousand kernels
from Python each time costs milliseconds of CPU per step. `GraphedModule` records the step once
per input signature into a CUDA graph and then, for every later call with that signature, copies
the new inputs into the graph's static input buffers and replays it.

The signature (`input_key`) is what a captured graph depends on: shape, dtype, device and
strides (memory format) of every tensor argument, which arguments are None, the values of
constant non-tensor arguments, and the modes that change what runs (autograd, inference mode,
autocast, module.training). Python floats (a timestep) are turned into tensors first, so a
value that changes every step goes through a static buffer and is never baked into a graph; ints
and bools are constants of the graph (part of the key), like shapes (num_frames-style arguments).

Memory: every capture allocates from ONE memory pool (`torch.cuda.graph_pool_handle()`), so the
graphs of several shapes share their scratch memory instead of each holding its own. That is
safe because replays run one at a time on one stream and a graph's outputs are only promised
until the next call: a later replay of another graph may reuse memory that this graph's output
occupies. Hence `clone_outputs=True` (the default) copies the outputs out after each replay.

What cannot be captured runs eagerly and is remembered as eager, so it is not retried on every
call: inputs a strategy does not support (CPU tensors for CUDA graphs), calls while autograd
is recording (graphs here serve inference), and signatures whose capture raised (a warning says
why once; e.g. an op that synchronises with the host).

The capture mechanics sit behind a small strategy: `CudaGraphCapture` records real graphs;
`EagerCapture` re-runs the module on the static buffers at each "replay", so the key, buffer,
reuse and eviction logic is exercised on any device (CPU tests) with the same buffer traffic.
"""
from __future__ import annotations

import numbers
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

EAGER_KEYS_KEPT = 256  # signatures remembered as eager; tiny records, bounded for long-lived servers


# ------------------------------------------------------------------------------ capture strategies
@dataclass
class Captured:
    """A recorded call: `replay()` recomputes `outputs` in place from the static input buffers."""

    outputs: Any  # the module's output structure; its tensors are rewritten by every replay
    replay: Callable[[], None]
    pool: Any  # memory pool the capture allocated from
    graph: Any = None  # the torch.cuda.CUDAGraph, for CudaGraphCapture
    release: Callable[[], None] = lambda: None  # called before the graph and its buffers are dropped


class CudaGraphCapture:
    """Records the call into a torch.cuda.CUDAGraph, following PyTorch's documented recipe:
    warm-up runs on a side stream (lazy initialisation, cuDNN/cuBLAS workspaces, autotuning and
    any per-shape kernel choice happen there, outside the capture), then capture into `pool`."""

    name = "cuda_graph"

    def __init__(self):
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}  # one per device: cuBLAS caches a workspace per stream

    def unsupported(self, tensors: list[torch.Tensor]) -> str | None:
        """Why these inputs cannot be captured, or None when they can."""
        devices = {t.device for t in tensors}
        if not devices:
            return "no tensor inputs"
        if any(d.type != "cuda" for d in devices):
            return f"inputs on {sorted(str(d) for d in devices)}: CUDA graphs need CUDA tensors"
        if len(devices) > 1:
            return f"inputs on several devices {sorted(str(d) for d in devices)}"
        return None

    def new_pool(self, device: torch.device):
        with torch.cuda.device(device):
            return torch.cuda.graph_pool_handle()

    def capture(self, run: Callable[[], Any], device: torch.device, warmup: int, pool) -> Captured:
        with torch.cuda.device(device):
            if device not in self._side_streams:
                self._side_streams[device] = torch.cuda.Stream()
            side = self._side_streams[device]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            generator = torch.cuda.default_generators[torch.cuda.current_device()]
            before = generator.clone_state()
            try:
                with torch.cuda.graph(graph, pool=pool):
                    outputs = run()
            except BaseException:
                # A failed capture never reaches capture_end's epilogue, so the device's default
                # generator would still believe it is capturing and refuse every later random draw
                # ("Offset increment outside graph capture"): give it back its state from before.
                generator.graphsafe_set_state(before)
                raise
        # a replay may still be running when the graph is dropped: let it finish first
        return Captured(outputs, graph.replay, pool, graph, release=lambda: torch.cuda.synchronize(device))


class EagerCapture:
    """Device-independent stand-in for CudaGraphCapture: 'capture' runs the module (warm-ups
    included) on the static input buffers, 'replay' runs it again on those buffers and copies the
    result into the first run's output tensors. Same buffers, same reuse, any device."""

    name = "eager"

    def unsupported(self, tensors: list[torch.Tensor]) -> str | None:
        return None

    def new_pool(self, device: torch.device):
        return object()  # an opaque token, like graph_pool_handle()

    def capture(self, run: Callable[[], Any], device: torch.device, warmup: int, pool) -> Captured:
        for _ in range(warmup):
            run()
        outputs = run()
        static = pytree.tree_leaves(outputs)

        def replay():
            for old, new in zip(static, pytree.tree_leaves(run())):
                if isinstance(old, torch.Tensor):
                    old.copy_(new)

        return Captured(outputs, replay, pool)


# ------------------------------------------------------------------------------------- signature
def tensorize_numbers(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Python floats (a timestep) -> 0-d tensors on the device of the first tensor argument, as
    torch.as_tensor makes them inside the module. Ints and bools stay constants: they size things."""
    device = next((v.device for v in chain(args, kwargs.values()) if isinstance(v, torch.Tensor)), None)

    def convert(v):
        if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
            return torch.as_tensor(v, device=device)
        return v

    return tuple(convert(v) for v in args), {k: convert(v) for k, v in kwargs.items()}


def _describe_arg(value) -> tuple:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.stride(), value.requires_grad)
    if value is None:
        return ("none",)
    hash(value)  # TypeError for unhashable constants: such calls run eagerly
    return ("const", type(value), value)


def _modes(training: bool) -> tuple:
    return (
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        training,
        torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
        torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
    )


def input_key(args: tuple, kwargs: dict | None = None, training: bool = False) -> tuple:
    """The signature a captured graph is valid for (call after `tensorize_numbers`).

    Raises TypeError when a non-tensor argument is unhashable (it cannot be keyed)."""
    kwargs = kwargs or {}
    names = tuple(sorted(kwargs))
    parts = tuple(_describe_arg(v) for v in chain(args, (kwargs[n] for n in names)))
    return (len(args), names, parts, _modes(training))


def describe_key(key: tuple) -> str:
    """A readable one-line form of a key, for stats and warnings."""
    n_args, names, parts, modes = key
    labels = [f"arg{i}" for i in range(n_args)] + list(names)
    shown = []
    for label, part in zip(labels, parts):
        if part[0] == "tensor":
            _, shape, dtype, device, stride, _ = part
            dims = ",".join(map(str, shape))
            layout = "" if stride == _contiguous_strides(shape) else f" strides={stride}"
            shown.append(f"{label}={str(dtype).removeprefix('torch.')}[{dims}]@{device}{layout}")
        elif part[0] == "none":
            shown.append(f"{label}=None")
        else:
            shown.append(f"{label}={part[2]!r}")
    grad, inference, training = modes[:3]
    flags = [name for name, on in (("grad", grad), ("inference", inference), ("train", training)) if on]
    if modes[3] or modes[5]:
        flags.append("autocast")
    return " ".join(shown) + (f" [{','.join(flags)}]" if flags else "")


def _contiguous_strides(shape: tuple) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


# ---------------------------------------------------------------------------------------- runner
@dataclass
class _GraphEntry:
    static_inputs: list  # one buffer per tensor argument, in argument order
    captured: Captured
    capture_s: float
    replays: int = 0


@dataclass
class _EagerRecord:
    reason: str
    calls: int = 0


class GraphedModule(torch.nn.Module):
    """Replays `module` from captured graphs, one per input signature (see the module docstring).

    module: called as module(*args, **kwargs) with tensors, None, floats or hashable constants;
        it returns a tensor or a (nested) tuple/list/dict of tensors.
    capture: the strategy, CudaGraphCapture() by default; EagerCapture() runs anywhere.
    warmup: runs before each capture (PyTorch asks for a few; they also trigger lazy set-up).
    pool: a memory-pool token to share with other graphed modules; None makes one at first use.
    max_entries: graphs kept at once; capturing one more frees the least recently replayed
        (stats["evictions"]). A freed signature is captured again if it comes back.
    clone_outputs: True returns a copy of the static outputs (one device copy of the output, a
        few MB for the SVD UNet, small next to the step). False returns the static outputs
        themselves: they are overwritten by the next call of this module (any signature, since
        the graphs share one pool), so the caller must consume or clone them first.
    check_weights: compare the parameters' and buffers' storage addresses on every call (about
        0.1 ms for the SVD UNet's 1.4k tensors) and drop all graphs when they moved (`.to()`,
        `.half()` of the inner module): a graph reads weights by address. Weights updated in place
        (load_state_dict, a LoRA merge) keep their addresses and replays see the new values.
        Parameters replaced by new objects behind the wrapper's back need `reset()`.

    Parameters, `.config` and other attributes of `module` are reachable through the wrapper;
    its state_dict has the inner module's keys, so it saves and loads like the module itself.
    """

    def __init__(self, module: torch.nn.Module, capture=None, warmup: int = 2, pool=None,
                 max_entries: int = 8, clone_outputs: bool = True, check_weights: bool = True):
        super().__init__()
        if int(warmup) != warmup or warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
        if int(max_entries) != max_entries or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.module = module
        self.strategy = capture if capture is not None else CudaGraphCapture()
        self.warmup, self.max_entries = int(warmup), int(max_entries)
        self.clone_outputs, self.check_weights = clone_outputs, check_weights
        self._given_pool = pool
        self._pool = pool
        self._entries: OrderedDict[tuple, _GraphEntry] = OrderedDict()
        self._eager: OrderedDict[tuple, _EagerRecord] = OrderedDict()
        self._weights: list[torch.Tensor] | None = None  # tensors the graphs read, and where they were
        self._weight_ptrs: list[int] = []
        self._counts = self._zero_counts()
        self._register_load_state_dict_pre_hook(_strip_wrapper_prefix_on_load, with_module=True)

    # ---------------------------------------------------------------------------- calling
    def forward(self, *args, **kwargs):
        args, kwargs = tensorize_numbers(args, kwargs)
        try:
            key = input_key(args, kwargs, self.module.training)
        except TypeError:  # an unhashable constant argument: nothing to key a graph on
            self._counts["eager_calls"] += 1
            return self.module(*args, **kwargs)
        if self.check_weights and self._entries:
            self._drop_graphs_if_weights_moved()
        entry = self._entries.get(key)
        if entry is not None:
            return self._replay(key, entry, args, kwargs)
        record = self._eager.get(key)
        if record is not None:
            record.calls += 1
            self._counts["eager_calls"] += 1
            return self.module(*args, **kwargs)
        return self._capture(key, args, kwargs)

    def _replay(self, key, entry: _GraphEntry, args, kwargs):
        for buffer, value in zip(entry.static_inputs, _tensors(args, kwargs)):
            if buffer is not value:
                buffer.copy_(value)
        entry.captured.replay()
        entry.replays += 1
        self._counts["replays"] += 1
        self._entries.move_to_end(key)
        outputs = entry.captured.outputs
        return pytree.tree_map_only(torch.Tensor, torch.Tensor.clone, outputs) if self.clone_outputs else outputs

    def _capture(self, key, args, kwargs):
        tensors = _tensors(args, kwargs)
        reason = self.strategy.unsupported(tensors)
        if reason is None and torch.is_grad_enabled() and self._needs_autograd(tensors):
            reason = "autograd is recording (graphs here serve inference; use no_grad or inference_mode)"
        if reason is not None:
            return self._run_eagerly(key, reason, args, kwargs)

        if len(self._entries) >= self.max_entries:
            _, evicted = self._entries.popitem(last=False)  # least recently replayed
            evicted.captured.release()
            self._counts["evictions"] += 1
        if not self._entries:  # with graphs held, forward() has just checked the addresses
            self._record_weights()
        device = tensors[0].device
        if self._pool is None:
            self._pool = self.strategy.new_pool(device)
        static = [t.detach().clone() for t in tensors]  # dense inputs keep their strides
        static_args, static_kwargs = _with_tensors(args, kwargs, static)
        start = time.perf_counter()
        try:
            captured = self.strategy.capture(lambda: self.module(*static_args, **static_kwargs),
                                             device, self.warmup, self._pool)
        except Exception as err:  # e.g. a host sync inside the step: run it eagerly from now on
            self._counts["failed_captures"] += 1
            first_line = str(err).strip().splitlines()[:1]
            reason = ": ".join(["capture failed", type(err).__name__, *first_line])
            warnings.warn(f"{describe_key(key)}: {reason}; running this signature eagerly", RuntimeWarning, stacklevel=2)
            return self._run_eagerly(key, reason, args, kwargs)
        entry = _GraphEntry(static, captured, time.perf_counter() - start)
        self._entries[key] = entry
        self._counts["captures"] += 1
        return self._replay(key, entry, args, kwargs)

    def _run_eagerly(self, key, reason: str, args, kwargs):
        self._eager[key] = _EagerRecord(reason, calls=1)
        if len(self._eager) > EAGER_KEYS_KEPT:
            self._eager.popitem(last=False)
        self._counts["eager_calls"] += 1
        return self.module(*args, **kwargs)

    def _needs_autograd(self, tensors) -> bool:
        return any(t.requires_grad for t in chain(tensors, self.module.parameters()))

    # ---------------------------------------------------------------------- weights and memory
    def _record_weights(self) -> None:
        self._weights = [t for w in chain(self.module.parameters(), self.module.buffers()) for t in _storages(w)]
        self._weight_ptrs = [w.data_ptr() for w in self._weights]

    def _drop_graphs_if_weights_moved(self) -> None:
        if [w.data_ptr() for w in self._weights] != self._weight_ptrs:
            self._drop_graphs()
            self._counts["weight_resets"] += 1

    def _drop_graphs(self) -> None:
        """Free every graph and static buffer; the next call of each signature captures again."""
        for entry in self._entries.values():
            entry.captured.release()
        self._entries.clear()
        self._eager.clear()
        self._weights, self._weight_ptrs = None, []
        self._pool = self._given_pool  # a pool of our own is released with its last graph

    def reset(self) -> None:
        """Free all graphs, static buffers and remembered signatures, and zero the stats.
        (On CUDA the freed memory returns to PyTorch's cache; torch.cuda.empty_cache() returns
        it to the device.)"""
        self._drop_graphs()
        self._counts = self._zero_counts()

    def _apply(self, fn, recurse=True):
        # .to() / .half() / .cuda() move the weights the graphs point at: start over.
        self._drop_graphs()
        return super()._apply(fn, recurse)

    # ----------------------------------------------------------------------------- reporting
    @staticmethod
    def _zero_counts() -> dict:
        return dict(captures=0, replays=0, eager_calls=0, failed_captures=0, evictions=0, weight_resets=0)

    @property
    def stats(self) -> dict:
        """Totals since construction or reset(), plus one record per signature held now."""
        per_key = {describe_key(k): {"mode": "graph", "replays": e.replays, "capture_s": e.capture_s}
                   for k, e in self._entries.items()}
        per_key.update({describe_key(k): {"mode": "eager", "calls": r.calls, "reason": r.reason}
                        for k, r in self._eager.items()})
        pools = {id(e.captured.pool) for e in self._entries.values()}
        return {"strategy": getattr(self.strategy, "name", type(self.strategy).__name__), **self._counts, "entries": len(self._entries),
                "pools": len(pools), "capture_s": sum(e.capture_s for e in self._entries.values()),
                "per_key": per_key}

    def extra_repr(self) -> str:
        return f"strategy={getattr(self.strategy, 'name', type(self.strategy).__name__)}, entries={len(self._entries)}/{self.max_entries}, clone_outputs={self.clone_outputs}"

    # ------------------------------------------------------------------------- transparency
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self.__dict__.get("_modules", {}).get("module")
            if module is None:
                raise
            return getattr(module, name)

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        return self.module.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)


def _strip_wrapper_prefix_on_load(module, state_dict, prefix, local_metadata, *_):
    """State dicts hold the inner module's keys; route them to `module.` while loading.
    Loading with assign=True replaces the weight tensors, so the graphs are dropped."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + "module." + key[len(prefix):]] = state_dict.pop(key)
    if local_metadata.get("assign_to_params_buffers"):
        module._drop_graphs()


def _storages(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding `tensor`'s data: itself, or the inner tensors of a wrapper subclass
    (torchao's int8/fp8 weights report data_ptr() 0); none for an opaque oneDNN tensor (CPU int8
    conv weights, which have no data pointer)."""
    if tensor.is_mkldnn:
        return []
    if not hasattr(tensor, "__tensor_flatten__"):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [t for name in names for t in _storages(getattr(tensor, name))]


def _tensors(args, kwargs) -> list[torch.Tensor]:
    """The tensor arguments in key order: positional, then keyword arguments by name."""
    return [v for v in chain(args, (kwargs[n] for n in sorted(kwargs))) if isinstance(v, torch.Tensor)]


def _with_tensors(args, kwargs, tensors: list[torch.Tensor]) -> tuple[tuple, dict]:
    """args and kwargs with their tensors replaced, in key order, by `tensors`."""
    replacements = iter(tensors)
    names = sorted(kwargs)
    values = [next(replacements) if isinstance(v, torch.Tensor) else v for v in chain(args, (kwargs[n] for n in names))]
    return tuple(values[: len(args)]), dict(zip(names, values[len(args):]))


# ----------------------------------------------------------------------------------- entry point
def graph_unet(unet: torch.nn.Module, enabled: bool | None = None, **options) -> torch.nn.Module:
    """The UNet behind a GraphedModule when CUDA graphs are wanted, else the UNet unchanged.

    enabled: None = auto (on when the UNet's parameters are on CUDA), True, False. False on a
    GraphedModule returns the module inside it. options go to GraphedModule (capture, warmup,
    pool, max_entries, clone_outputs, check_weights).

    The UNet is called as unet(sample (B,T,C,h,w), c_noise (B,) or a float, context (B,L,D),
    added_time_ids (B,3), image_only_indicator=None); with both CFG halves in one batch, one graph
    serves each (batch, frames, height, width, dtype) for every step and every later video.
    """
    if isinstance(unet, GraphedModule):
        return unet.module if enabled is False else unet
    on_cuda = _on_cuda(unet)
    if enabled is None:
        enabled = on_cuda
    if not enabled:
        return unet
    if not on_cuda and "capture" not in options:
        device = next((p.device for p in unet.parameters()), "no parameters")
        raise ValueError(f"cuda_graphs=True needs the UNet on a CUDA device; it is on {device}")
    return GraphedModule(unet, **options)


def _on_cuda(module: torch.nn.Module) -> bool:
    first = next(module.parameters(), None)
    return first is not None and first.device.type == "cuda"
