"""svd_fast.accel.graphs: signature keys, capture/replay bookkeeping and static buffers on CPU
(EagerCapture re-runs the module on the static buffers, so a broken input copy or a stale buffer
shows up as a wrong output), and real CUDA graphs of the tiny UNet when a GPU is present.

The reference is always a plain call of the same module on the same inputs."""
import copy
import gc
import warnings
import weakref

import pytest
import torch
from torch.utils import _pytree as pytree

from svd_fast.accel.graphs import (
    CudaGraphCapture, EagerCapture, GraphedModule, graph_unet, input_key, tensorize_numbers,
)
from svd_fast.config import SVDConfig
from svd_fast.unet import VideoUNet
from tests.conftest import randomize_

# The replay runs the module's own kernels on bit-identical copies of the inputs (same strides),
# so on CPU the outputs must agree exactly.
EXACT = dict(rtol=0, atol=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes: one thread avoids OpenMP barrier stalls on a busy shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def unet():
    return randomize_(VideoUNet(SVDConfig.from_name("tiny").unet), std=0.1).eval().requires_grad_(False)


def unet_inputs(unet, batch=2, frames=2, size=(8, 8), seed=0, device="cpu", dtype=torch.float32):
    """(sample, c_noise, context, added_time_ids) as the Denoiser passes them (CFG batch of 2)."""
    cfg = unet.config
    g = torch.Generator().manual_seed(seed)
    tensors = (
        torch.randn(batch, frames, cfg.in_channels, *size, generator=g),
        torch.randn(batch, generator=g) * 2,  # c_noise = ln(sigma) / 4
        torch.randn(batch, 1, cfg.cross_attention_dim, generator=g),
        torch.rand(batch, 3, generator=g) * torch.tensor([6.0, 127.0, 0.02]),
    )
    return tuple(t.to(device=device, dtype=dtype) for t in tensors)


class Recorder(torch.nn.Module):
    """A small module that notes every call: the input objects it was handed and their memory."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.calls, self.seen = 0, []

    def forward(self, x, scale=None, flag=True):
        self.calls += 1
        self.seen.append((x, x.data_ptr()))
        y = self.linear(x)
        if scale is not None:
            y = y * scale.reshape(-1, *[1] * (y.dim() - 1))
        return y if flag else -y


def recorder_graph(**kw):
    module = Recorder()
    return module, GraphedModule(module, EagerCapture(), **kw)


# ----------------------------------------------------------------------------------------- keys
def test_key_ignores_values_and_tells_signatures_apart():
    x, t = torch.randn(2, 3, 4, 5), torch.randn(2)
    key = input_key((x, t, None))
    assert input_key((torch.randn(2, 3, 4, 5), torch.randn(2), None)) == key  # new values, same graph
    different = {
        "shape": input_key((torch.randn(2, 3, 4, 6), t, None)),
        "dtype": input_key((x.double(), t, None)),
        "layout": input_key((x.contiguous(memory_format=torch.channels_last), t, None)),
        "transposed strides": input_key((x.transpose(2, 3).contiguous().transpose(2, 3), t, None)),
        "None pattern": input_key((x, t, torch.zeros(2, 3))),
        "keyword instead of positional": input_key((x, t), {"indicator": None}),
        "constant value": input_key((x, t, False)),
        "training": input_key((x, t, None), training=True),
    }
    with torch.no_grad():
        different["grad mode"] = input_key((x, t, None))
    with torch.inference_mode():
        different["inference mode"] = input_key((x, t, None))
    for what, other in different.items():
        assert other != key, what
    assert len(set(different.values())) == len(different)


def test_numbers_become_tensors_so_a_changing_timestep_is_not_baked_in():
    x = torch.randn(2, 3)
    args, kwargs = tensorize_numbers((x, 0.25, True), {"frames": 3})
    assert args[0] is x and args[2] is True and kwargs["frames"] == 3  # ints and bools size things: constants
    assert isinstance(args[1], torch.Tensor) and args[1].shape == () and args[1].dtype == torch.float32
    assert args[1].item() == 0.25
    assert input_key((x,), {"frames": 3}) != input_key((x,), {"frames": 4})
    # a float timestep and a 0-d float tensor of another value share one graph
    assert input_key(args[:2]) == input_key((x, torch.tensor(0.75)))
    with pytest.raises(TypeError):
        input_key((x, [1, 2]))  # unhashable constants cannot be keyed


# ------------------------------------------------------------------------- replay correctness
def test_unet_replays_equal_plain_calls_for_many_inputs(unet):
    """Every replay reads the NEW inputs from the static buffers: with a stale buffer the outputs
    would repeat the first call's, which differ from the plain calls checked here."""
    graphed = GraphedModule(unet, EagerCapture(), warmup=1)
    outputs = []
    with torch.inference_mode():
        for seed in range(5):
            x = unet_inputs(unet, seed=seed)
            out = graphed(*x)
            torch.testing.assert_close(out, unet(*x), **EXACT)
            outputs.append(out)
        for t in (0.1, -1.3, 2.0):  # a Python float timestep, changing every step
            x = unet_inputs(unet, seed=10)
            torch.testing.assert_close(graphed(x[0], t, *x[2:]), unet(x[0], t, *x[2:]), **EXACT)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(outputs, outputs[1:]))
    stats = graphed.stats
    assert (stats["captures"], stats["replays"], stats["eager_calls"], stats["entries"]) == (2, 8, 0, 2)
    assert sorted(r["replays"] for r in stats["per_key"].values()) == [3, 5]


def test_unet_with_indicator_and_a_second_shape(unet):
    graphed = GraphedModule(unet, EagerCapture(), warmup=0)
    with torch.inference_mode():
        for seed in range(2):
            for size, frames in (((8, 8), 2), ((16, 8), 3)):
                x = unet_inputs(unet, frames=frames, size=size, seed=seed)
                indicator = torch.tensor([[0.0] * frames, [1.0] * frames])
                torch.testing.assert_close(graphed(*x, indicator), unet(*x, indicator), **EXACT)
    assert graphed.stats["captures"] == 2 and graphed.stats["replays"] == 4


def test_keyword_arguments_and_tuple_outputs_through_the_diffusers_wrapper(unet):
    """The diffusers-facing UNet: keyword tensors, a 0-d timestep, return_dict=False -> tuple."""
    from svd_fast.diffusers_bridge import DiffusersUNet

    wrapped = DiffusersUNet(unet, {})
    graphed = GraphedModule(wrapped, EagerCapture(), warmup=0)
    with torch.inference_mode():
        for seed in range(3):
            sample, _, context, ids = unet_inputs(unet, seed=seed)
            t = torch.tensor(0.3 * seed)
            kw = dict(encoder_hidden_states=context, added_time_ids=ids, return_dict=False)
            out = graphed(sample, t, **kw)
            assert isinstance(out, tuple) and len(out) == 1
            torch.testing.assert_close(out[0], wrapped(sample, t, **kw)[0], **EXACT)
    assert graphed.stats["captures"] == 1 and graphed.stats["replays"] == 3


# ------------------------------------------------------------------------------- bookkeeping
def test_capture_once_per_key_then_replay():
    module, graphed = recorder_graph(warmup=2)
    small, large = torch.randn(2, 4), torch.randn(5, 4)
    with torch.no_grad():
        graphed(small)
        assert module.calls == 4  # two warm-ups, the capture, and the replay that answers the call
        for _ in range(4):
            graphed(small)
            graphed(large)
    stats = graphed.stats
    assert (stats["captures"], stats["replays"], stats["eager_calls"]) == (2, 9, 0)
    assert module.calls == 4 + 4 + 3 + 4  # small: capture + replay, large: capture + replay, 4 + 4 replays
    assert sorted(r["replays"] for r in stats["per_key"].values()) == [4, 5]
    assert stats["pools"] == 1  # both signatures allocate from one shared pool


def test_replays_use_the_same_static_buffers():
    module, graphed = recorder_graph(warmup=0, clone_outputs=False)
    with torch.no_grad():
        outputs = [graphed(torch.randn(3, 4)) for _ in range(4)]
    buffers = {id(x) for x, _ in module.seen}
    pointers = {ptr for _, ptr in module.seen}
    assert len(buffers) == 1 and len(pointers) == 1  # every run read the one static input buffer
    assert all(out is outputs[0] for out in outputs)  # and wrote the one static output


def test_clone_outputs_semantics():
    module, shared = recorder_graph(warmup=0, clone_outputs=False)
    _, cloned = recorder_graph(warmup=0)
    cloned.load_state_dict(module.state_dict())
    x1, x2 = torch.randn(3, 4), torch.randn(3, 4)
    with torch.no_grad():
        expected1, expected2 = module(x1), module(x2)
        a, b = shared(x1), shared(x2)
        assert a is b  # the static output: the second call overwrote the first result
        torch.testing.assert_close(a, expected2, **EXACT)
        c, d = cloned(x1), cloned(x2)
        assert c is not d and c.data_ptr() != d.data_ptr()
        torch.testing.assert_close(c, expected1, **EXACT)
        torch.testing.assert_close(d, expected2, **EXACT)


class FailingCapture(EagerCapture):
    """Capture raises, as a real CUDA capture does for a step that synchronises with the host."""

    def __init__(self):
        self.attempts = 0

    def capture(self, run, device, warmup, pool):
        self.attempts += 1
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


def test_a_failed_capture_runs_eagerly_and_is_not_retried():
    module = Recorder()
    strategy = FailingCapture()
    graphed = GraphedModule(module, strategy, warmup=0)
    x = torch.randn(3, 4)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="capture failed: RuntimeError"):
            torch.testing.assert_close(graphed(x), module(x), **EXACT)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # remembered: no second attempt, no second warning
            for _ in range(3):
                x = torch.randn(3, 4)
                torch.testing.assert_close(graphed(x), module(x), **EXACT)
    assert strategy.attempts == 1
    stats = graphed.stats
    assert (stats["captures"], stats["failed_captures"], stats["eager_calls"], stats["entries"]) == (0, 1, 4, 0)
    (record,) = stats["per_key"].values()
    assert record["mode"] == "eager" and record["calls"] == 4 and "not permitted" in record["reason"]


def test_cuda_strategy_leaves_cpu_inputs_eager_without_trying():
    module = Recorder()
    graphed = GraphedModule(module, CudaGraphCapture())
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(2, 4)
            torch.testing.assert_close(graphed(x), module(x), **EXACT)
    stats = graphed.stats
    assert (stats["captures"], stats["eager_calls"], stats["failed_captures"]) == (0, 3, 0)
    assert "CUDA graphs need CUDA tensors" in next(iter(stats["per_key"].values()))["reason"]


def test_autograd_calls_run_eagerly_and_keep_their_graph():
    module, graphed = recorder_graph(warmup=0)
    x = torch.randn(2, 4)
    out = graphed(x)  # grad enabled, parameters require grad
    assert out.grad_fn is not None
    out.sum().backward()
    assert module.linear.weight.grad is not None
    with torch.no_grad():
        graphed(x)
    stats = graphed.stats
    assert (stats["captures"], stats["eager_calls"]) == (1, 1)
    assert any("autograd" in r.get("reason", "") for r in stats["per_key"].values())


def test_max_entries_evicts_the_least_recently_replayed():
    _, graphed = recorder_graph(warmup=0, max_entries=2)
    a, b, c = torch.randn(1, 4), torch.randn(2, 4), torch.randn(3, 4)
    with torch.no_grad():
        for x in (a, b, a, c):  # b is the least recently used when c arrives
            graphed(x)
        assert (graphed.stats["captures"], graphed.stats["evictions"], graphed.stats["entries"]) == (3, 1, 2)
        graphed(a)  # still held
        assert graphed.stats["captures"] == 3
        graphed(b)  # evicted before: captured again, pushing out c
        assert (graphed.stats["captures"], graphed.stats["evictions"], graphed.stats["entries"]) == (4, 2, 2)
    with pytest.raises(ValueError, match="max_entries"):
        GraphedModule(Recorder(), EagerCapture(), max_entries=0)


def test_reset_frees_graphs_and_buffers():
    module, graphed = recorder_graph(warmup=0, clone_outputs=False)
    with torch.no_grad():
        out = graphed(torch.randn(2, 4))
    static_input = weakref.ref(module.seen[0][0])
    static_output = weakref.ref(out)
    del out
    module.seen.clear()
    graphed.reset()
    gc.collect()
    assert static_input() is None and static_output() is None
    assert graphed.stats["entries"] == 0 and graphed.stats["captures"] == 0 and graphed.stats["per_key"] == {}
    with torch.no_grad():
        graphed(torch.randn(2, 4))
    assert graphed.stats["captures"] == 1 and graphed.stats["pools"] == 1


# --------------------------------------------------------------------------- weights and state
def test_moved_weights_drop_the_graphs_and_in_place_updates_do_not():
    module, graphed = recorder_graph(warmup=0)
    x = torch.randn(2, 4)
    with torch.no_grad():
        graphed(x)
        module.linear.weight.mul_(2)  # in place: same memory, replays read the new values
        torch.testing.assert_close(graphed(x), module(x), **EXACT)
        assert graphed.stats["weight_resets"] == 0 and graphed.stats["captures"] == 1
        old_weight = module.linear.weight.data  # kept alive, so the new storage cannot reuse its address
        module.double().float()  # new storage behind the wrapper's back
        torch.testing.assert_close(graphed(x), module(x), **EXACT)
        assert graphed.stats["weight_resets"] == 1 and graphed.stats["captures"] == 2
        del old_weight
        graphed.to(torch.float32)  # through the wrapper: dropped at once
        assert graphed.stats["entries"] == 0


def test_wrapper_is_transparent_for_attributes_and_state_dicts(unet):
    graphed = graph_unet(unet, enabled=True, capture=EagerCapture(), warmup=0)
    assert graphed.config is unet.config and graphed.add_embedding is unet.add_embedding
    assert list(graphed.state_dict()) == list(unet.state_dict())
    parent = torch.nn.ModuleDict({"unet": graphed})
    assert list(parent.state_dict()) == ["unet." + k for k in unet.state_dict()]

    module = Recorder()
    graphed = GraphedModule(module, EagerCapture(), warmup=0)
    x = torch.randn(2, 4)
    with torch.no_grad():
        graphed(x)
        new = {k: torch.randn_like(v) for k, v in module.state_dict().items()}
        torch.nn.ModuleDict({"net": graphed}).load_state_dict({"net." + k: v for k, v in new.items()})
        torch.testing.assert_close(module.linear.weight, new["linear.weight"], **EXACT)
        torch.testing.assert_close(graphed(x), torch.nn.functional.linear(x, new["linear.weight"], new["linear.bias"]), **EXACT)
        graphed.load_state_dict(new, assign=True)  # new tensors: the graphs are dropped
        assert graphed.stats["entries"] == 0


# ---------------------------------------------------------------------------------- graph_unet
def test_graph_unet_is_off_on_cpu_unless_a_strategy_is_given(unet):
    assert graph_unet(unet) is unet  # auto: parameters on CPU
    assert graph_unet(unet, enabled=False) is unet
    with pytest.raises(ValueError, match="CUDA device"):
        graph_unet(unet, enabled=True)
    graphed = graph_unet(unet, enabled=True, capture=EagerCapture(), warmup=0)
    assert isinstance(graphed, GraphedModule) and graphed.module is unet
    assert graph_unet(graphed) is graphed and graph_unet(graphed, enabled=False) is unet
    x = unet_inputs(unet, seed=3)
    with torch.inference_mode():
        torch.testing.assert_close(graphed(*x), unet(*x), **EXACT)


# ----------------------------------------------------------------------------------------- CUDA
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device; CPU CI covers the device-independent logic")


@pytest.fixture(params=["reference", "configured"])
def kernel_backend(request):
    """Plain PyTorch ops, then the backend svd_fast would use (Triton kernels on CUDA)."""
    from svd_fast import kernels

    previous = kernels.get_backend()
    if request.param == "reference":
        kernels.set_backend("reference")
    elif kernels.triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1 runs Triton through the host, which no graph can capture; "
                    "run the GPU tests with TRITON_INTERPRET=0")
    yield request.param
    kernels.set_backend(previous)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@NEEDS_CUDA
def test_cuda_graph_replays_match_eager_with_one_memory_pool(unet, kernel_backend):
    device = torch.device("cuda")
    model = copy.deepcopy(unet).to(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a tight eager reference
    try:
        graphed = graph_unet(model)  # auto: on, the parameters are on CUDA
        assert isinstance(graphed, GraphedModule) and isinstance(graphed.strategy, CudaGraphCapture)
        outputs = []
        with torch.inference_mode():
            for seed in range(3):
                for size in ((8, 8), (16, 16)):
                    x = unet_inputs(unet, frames=4, size=size, seed=seed, device=device)
                    out = graphed(*x)
                    torch.testing.assert_close(out, model(*x), rtol=1e-5, atol=1e-5)
                    torch.testing.assert_close(graphed(x[0], 0.5, *x[2:]), model(x[0], 0.5, *x[2:]), rtol=1e-5, atol=1e-5)
                    outputs.append(out)
        assert (outputs[0] - outputs[2]).abs().max() > 1e-3  # new inputs, new outputs (not a stale replay)
        stats = graphed.stats
        assert (stats["captures"], stats["replays"], stats["eager_calls"], stats["failed_captures"]) == (4, 12, 0, 0)
        entries = list(graphed._entries.values())
        assert len({entry.captured.graph.pool() for entry in entries}) == 1 and stats["pools"] == 1
        buffers = _bytes([t for e in entries for t in [*e.static_inputs, *pytree.tree_leaves(e.captured.outputs)]])
        del x, out, outputs, entries
        gc.collect()
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated(device)
        graphed.reset()
        gc.collect()
        torch.cuda.synchronize()
        assert held - torch.cuda.memory_allocated(device) >= buffers  # static inputs and outputs freed
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


class HostSync(torch.nn.Module):
    def forward(self, x):
        return x * x.sum().item()  # .item() waits for the device: not capturable


@NEEDS_CUDA
def test_cuda_capture_failure_falls_back_to_eager():
    graphed = GraphedModule(HostSync())
    with torch.no_grad():
        x = torch.randn(4, 4, device="cuda")
        with pytest.warns(RuntimeWarning, match="capture failed"):
            torch.testing.assert_close(graphed(x), x * x.sum().item())
        x = torch.randn(4, 4, device="cuda")
        torch.testing.assert_close(graphed(x), x * x.sum().item())
        torch.testing.assert_close(graphed(x) + 1, x * x.sum().item() + 1)  # the device still works
    assert (graphed.stats["failed_captures"], graphed.stats["eager_calls"], graphed.stats["captures"]) == (1, 3, 0)


def test_pipeline_with_the_runner_gives_the_same_video():
    """SVDPipeline with its UNet slot graphed (what accelerate(cuda_graphs=...) does): the same
    latents, one capture for the CFG batch, one replay per step and per later call."""
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_config("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    kw = dict(height=64, width=64, num_frames=3, num_inference_steps=3, output_type="latent")
    reference = pipe(image, generator=torch.Generator().manual_seed(1), **kw).frames
    plain = pipe.unet
    pipe.unet = graph_unet(plain, enabled=True, capture=EagerCapture(), warmup=0)
    first = pipe(image, generator=torch.Generator().manual_seed(1), **kw).frames
    second = pipe(image, generator=torch.Generator().manual_seed(1), **kw).frames
    torch.testing.assert_close(first, reference, **EXACT)
    torch.testing.assert_close(second, reference, **EXACT)
    stats = pipe.unet.stats
    assert (stats["captures"], stats["replays"], stats["eager_calls"]) == (1, 6, 0)
    (signature,) = stats["per_key"]
    assert "arg0=float32[2,3,8,8,8]" in signature  # both CFG halves in one batch
