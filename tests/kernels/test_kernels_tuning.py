"""Backend "auto" chooses by measurement: the faster candidate wins, choices persist on disk (keyed by
machine, op, shape, dtype), survive a corrupt cache, are never timed while torch.compile traces, and
never change results (every backend matches the reference)."""
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import torch._dynamo.testing
from kernel_test_utils import assert_close_to_fp32, native_ops

from svd_fast import kernels, layers
from svd_fast.kernels import reference, tuning

STARVED_RULE = tuning.CLEAN_CPU_SHARE  # the library's rule; the fixture relaxes it for the other tests
SLOW_S = 0.005  # what makes a candidate "slow": far above the ~10 us of the ops at these shapes


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test: its own cache file (never the user's ~/.cache), measuring on, a fresh auto backend.
    Every sample counts as clean (CLEAN_CPU_SHARE 0): on a loaded machine (CI neighbours, nice) the
    tests below would otherwise see starved samples and nothing cached; the starvation rule has its
    own test, which restores the share."""
    monkeypatch.setattr(tuning, "CLEAN_CPU_SHARE", 0.0)
    monkeypatch.setenv("SVD_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SVD_FAST_TUNE", raising=False)
    saved = (kernels._backend, kernels._table, kernels._choices)
    tuning.reload()
    tuning._warned.clear()
    yield tmp_path / "cache" / tuning.CACHE_FILE
    kernels._backend, kernels._table, kernels._choices = saved
    tuning.reload()


def busy_wait(seconds: float) -> None:
    """Keep the CPU busy (a slow kernel computes; a sleeping one would look starved of CPU to the timer)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Counted:
    """A candidate that counts its calls, optionally made slow by busy-waiting (or sleeping) first."""

    def __init__(self, fn, delay=0.0, sleep=False):
        self.fn, self.delay, self.sleep, self.calls = fn, delay, sleep, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.delay:
            (time.sleep if self.sleep else busy_wait)(self.delay)
        return self.fn(*args, **kwargs)


def geglu_op(slow: str):
    """A TunedOp over two geglu candidates, 'first' and 'second' (the starting order), one of them slow."""
    first = Counted(reference.geglu, SLOW_S if slow == "first" else 0.0)
    second = Counted(reference.geglu, SLOW_S if slow == "second" else 0.0)
    return tuning.TunedOp("geglu", {"cpu": [("first", first), ("second", second)]}, reference.geglu), first, second


def entries(path):
    return {k: e for section in json.loads(path.read_text())["machines"].values() for k, e in section.items()}


@pytest.mark.parametrize("slow", ["first", "second"])
def test_measured_choice_picks_the_faster_candidate(slow, private_cache):
    op, first, second = geglu_op(slow)
    fast_one, slow_one = (second, first) if slow == "first" else (first, second)
    x = torch.randn(3, 10)
    torch.testing.assert_close(op(x), reference.geglu(x))
    assert slow_one.calls >= 2 and fast_one.calls >= 3  # warm-up + repeats each; the winner then serves the call
    (entry,) = entries(private_cache).values()
    assert entry["winner"] == ("second" if slow == "first" else "first")
    assert entry["times_ms"][slow] >= SLOW_S * 1e3 > entry["times_ms"]["second" if slow == "first" else "first"]
    calls = (first.calls, second.calls)
    for _ in range(3):
        op(x)
    assert slow_one.calls == calls[slow == "second"] and fast_one.calls == calls[slow == "first"] + 3


def test_close_times_keep_the_starting_order():
    assert tuning.pick_winner(["a", "b"], {"a": 1.02, "b": 1.0}) == "a"  # within TIE_MARGIN: timer noise
    assert tuning.pick_winner(["a", "b"], {"a": 1.2, "b": 1.0}) == "b"
    assert tuning.pick_winner(["a", "b"], {"b": 1.0}) == "b"  # a raised while being timed


def test_cache_file_is_written_and_reused_without_timing(private_cache):
    op, first, second = geglu_op("first")
    x = torch.randn(4, 6)
    op(x)
    assert private_cache.exists()
    data = json.loads(private_cache.read_text())
    (machine,) = data["machines"]
    assert tuning.cpu_model() in machine and torch.__version__ in machine and "svd_fast" in machine
    (key, entry) = next(iter(data["machines"][machine].items()))
    assert key == "geglu cpu (fp32[4,6])" and entry["dtype"] == "fp32" and entry["op"] == "geglu"

    tuning.reload()  # a fresh state: only the file remembers
    fresh, first, second = geglu_op("first")
    before = tuning.measurements
    torch.testing.assert_close(fresh(x), reference.geglu(x))
    assert (first.calls, second.calls) == (0, 1), "the cached winner ran once; nothing was timed"
    assert tuning.measurements == before


def test_a_fresh_process_reuses_the_cache(tmp_path):
    script = textwrap.dedent("""
        import time, torch
        from svd_fast.kernels import reference, tuning
        tuning.CLEAN_CPU_SHARE = 0.0  # as in the fixture: a loaded machine must not keep this test from caching
        def slow(x):
            end = time.perf_counter() + 0.005
            while time.perf_counter() < end:
                pass
            return reference.geglu(x)
        op = tuning.TunedOp("geglu", {"cpu": [("slow", slow), ("reference", reference.geglu)]}, reference.geglu)
        op(torch.randn(5, 8))
        print(tuning.measurements, tuning.measured("cpu")["geglu cpu (fp32[5,8])"]["winner"])
    """)
    env = {**os.environ, "SVD_FAST_CACHE_DIR": str(tmp_path / "shared")}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert [r.stdout.split() for r in runs] == [["1", "reference"], ["0", "reference"]]
    listing = subprocess.run([sys.executable, "-m", "svd_fast.kernels", "--list"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if "fp32[5,8]" in line)
    assert "reference" in line and "slow" in line and line.rstrip().endswith("-> reference"), listing.stdout


CORRUPT = {
    "garbage": b"\x00\xffnot json{",
    "truncated": b'{"format": 1, "machines": {',
    "list": b"[1, 2, 3]",
    "wrong-format": b'{"format": 99, "machines": {}}',
    "machines-not-a-dict": b'{"format": 1, "machines": ["a"]}',
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_cache_is_ignored_with_one_warning_and_rewritten(case, private_cache):
    private_cache.parent.mkdir(parents=True)
    private_cache.write_bytes(CORRUPT[case])
    op, first, second = geglu_op("second")
    x = torch.randn(2, 4)
    with pytest.warns(RuntimeWarning, match="ignoring") as record:
        torch.testing.assert_close(op(x), reference.geglu(x))
    assert len([w for w in record if "kernel choice cache" in str(w.message)]) == 1  # read twice, warned once
    assert entries(private_cache)["geglu cpu (fp32[2,4])"]["winner"] == "first"


def test_entries_of_the_wrong_types_are_dropped_and_measured_again(private_cache):
    op, first, second = geglu_op("first")
    x = torch.randn(2, 6)
    machine = tuning.machine_key(torch.device("cpu"))
    key = "geglu cpu (fp32[2,6])"
    bad = {"winner": 3, "times_ms": "fast"}
    private_cache.parent.mkdir(parents=True)
    private_cache.write_text(json.dumps({"format": 1, "machines": {machine: {key: bad, "other": {"winner": "x"}},
                                                                   "elsewhere": "not a dict"}}))
    with pytest.warns(RuntimeWarning, match="malformed entries"):
        op(x)
    assert tuning.measurements and second.calls > 1
    assert entries(private_cache) == {key: entries(private_cache)[key]}
    assert entries(private_cache)[key]["winner"] == "second"


def _old_entry(when: str) -> dict:
    return {"op": "geglu", "device": "cpu", "args": "fp32[1,2]", "winner": "first", "times_ms": {"first": 1.0},
            "measured": when}


def test_the_file_keeps_the_newest_entries_and_sections(monkeypatch, private_cache):
    monkeypatch.setattr(tuning, "MAX_ENTRIES", 3)
    monkeypatch.setattr(tuning, "MAX_SECTIONS", 2)
    here = tuning.machine_key(torch.device("cpu"))
    private_cache.parent.mkdir(parents=True)
    private_cache.write_text(json.dumps({"format": 1, "machines": {
        here: {"old-2018": _old_entry("2018-01-01T00:00:00+00:00"),
               "old-2021": _old_entry("2021-01-01T00:00:00+00:00")},
        "an old version, 2019": {"a": _old_entry("2019-01-01T00:00:00+00:00")},
        "an old version, 2020": {"b": _old_entry("2020-01-01T00:00:00+00:00")},
    }}))
    op, _, _ = geglu_op("first")
    op(torch.randn(1, 4))
    op(torch.randn(1, 6))
    machines = json.loads(private_cache.read_text())["machines"]
    assert set(machines) == {here, "an old version, 2020"}
    assert set(machines[here]) == {"old-2021", "geglu cpu (fp32[1,4])", "geglu cpu (fp32[1,6])"}


def test_a_cached_winner_that_no_longer_exists_is_measured_again(private_cache):
    op, first, second = geglu_op("first")
    x = torch.randn(2, 6)
    op(x)
    tuning.reload()
    renamed = tuning.TunedOp("geglu", {"cpu": [("first", first), ("third", second)]}, reference.geglu)
    before = tuning.measurements
    renamed(x)
    assert tuning.measurements == before + 1  # "third" was never timed for this shape
    assert entries(private_cache)["geglu cpu (fp32[2,6])"]["winner"] == "third"


def test_an_unwritable_cache_keeps_choices_in_memory(private_cache):
    private_cache.mkdir(parents=True)  # a folder where the file should be: unreadable and unwritable
    op, first, second = geglu_op("first")
    x = torch.randn(2, 2)
    with pytest.warns(RuntimeWarning) as record:
        op(x)
    messages = " | ".join(str(w.message) for w in record)
    assert "ignoring the kernel choice cache" in messages and "cannot write" in messages
    calls = (first.calls, second.calls)
    op(x)
    assert (first.calls, second.calls) == (calls[0], calls[1] + 1)  # the winner, from memory


def test_an_edited_or_rebuilt_kernel_gets_a_new_cache_section(tmp_path):
    source, library = tmp_path / "group_norm.py", tmp_path / "_C.so"
    source.write_text("a")
    library.write_bytes(b"x")
    before = tuning.fingerprint([source, library])
    assert tuning.fingerprint([library, source]) == before  # order does not matter
    os.utime(library, ns=(0, 10**9))  # rebuilt: new modification time
    assert tuning.fingerprint([source, library]) != before
    library.unlink()
    assert tuning.fingerprint([source, library]) != before
    names = {f.name for f in tuning.kernel_files()}
    assert {"reference.py", "tuning.py", "ops.py"} <= names
    assert f"kernels {tuning.fingerprint(tuning.kernel_files())}" in tuning.machine_key(torch.device("cpu"))


def test_keys_differ_by_shape_dtype_layout_and_int_arguments_not_by_eps():
    x = torch.randn(6, 8, 3, 2)
    sig = tuning.signature
    base = sig((x, 2, None, None, 1e-5, True, 3), {})
    assert sig((x, 2, None, None, 1e-6, True, 3), {}) == base  # eps does not change the speed
    different = [
        sig((torch.randn(6, 8, 3, 3), 2, None, None, 1e-5, True, 3), {}),
        sig((x.bfloat16(), 2, None, None, 1e-5, True, 3), {}),
        sig((x.contiguous(memory_format=torch.channels_last), 2, None, None, 1e-5, True, 3), {}),
        sig((x[:, ::2], 2, None, None, 1e-5, True, 3), {}),
        sig((x, 2, None, None, 1e-5, False, 3), {}),
        sig((x, 2, None, None, 1e-5, True, 2), {}),
        sig((x, 4, None, None, 1e-5, True, 3), {}),
        sig((x, 2, torch.ones(8), None, 1e-5, True, 3), {}),
    ]
    assert len({base, *different}) == len(different) + 1
    assert tuning.signature_text(sig((x.contiguous(memory_format=torch.channels_last).bfloat16(), 2, None, None,
                                      1e-5, True, 3), {})) == "bf16[6,8,3,2]cl, 2, None, None, *, True, 3"


def test_each_shape_and_dtype_is_measured_once_and_stored_separately(private_cache):
    op, _, _ = geglu_op("first")
    inputs = [torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 4).bfloat16(), torch.randn(4, 3, 4)[:, 0]]
    before = tuning.measurements
    for x in inputs * 2:
        op(x)
    assert tuning.measurements == before + len(inputs)
    assert sorted(entries(private_cache)) == sorted([
        "geglu cpu (fp32[3,4])", "geglu cpu (fp32[3,6])", "geglu cpu (bf16[3,4])",
        "geglu cpu (fp32[4,4]strides(12,1))"])
    assert {e["dtype"] for e in entries(private_cache).values()} == {"fp32", "bf16"}


def test_a_choice_timed_without_the_cpu_serves_the_process_but_is_not_cached(monkeypatch, private_cache):
    """A sleeping candidate's wall time is not CPU time: what a descheduled process measures."""
    monkeypatch.setattr(tuning, "CLEAN_CPU_SHARE", STARVED_RULE)
    first = Counted(reference.geglu, SLOW_S, sleep=True)
    second = Counted(reference.geglu)
    op = tuning.TunedOp("geglu", {"cpu": [("first", first), ("second", second)]}, reference.geglu)
    x = torch.randn(2, 4)
    op(x)
    assert not private_cache.exists()
    assert first.calls <= 1 + tuning.MAX_ATTEMPTS  # retried, within bounds
    assert first.calls * SLOW_S <= tuning.STARVED_CAP_S + 2 * SLOW_S
    calls = (first.calls, second.calls)
    op(x)
    assert (first.calls, second.calls) == (calls[0], calls[1] + 1)  # the winner, from memory


def test_tuning_off_uses_the_starting_order_and_writes_nothing(monkeypatch, private_cache):
    monkeypatch.setenv("SVD_FAST_TUNE", "0")
    op, first, second = geglu_op("first")
    op(torch.randn(2, 4))
    assert (first.calls, second.calls) == (1, 0) and not private_cache.exists()


def test_processes_of_a_multi_process_run_use_the_starting_order(monkeypatch, private_cache):
    """Timed per process, the ranks of a distributed run could pick different kernels and diverge."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    op, first, second = geglu_op("first")
    op(torch.randn(2, 4))
    assert (first.calls, second.calls) == (1, 0) and not private_cache.exists()
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)  # one process: measured
    assert tuning.tuning_enabled()
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setenv("SVD_FAST_TUNE", "1")  # asked for
    assert tuning.tuning_enabled()


def test_nothing_is_timed_under_a_dispatch_mode(private_cache):
    from torch.utils.flop_counter import FlopCounterMode

    op, first, second = geglu_op("first")
    x = torch.randn(2, 4)
    with FlopCounterMode(display=False):
        op(x)
    assert (first.calls, second.calls) == (1, 0) and not private_cache.exists()
    op(x)  # outside the mode the shape is measured
    assert entries(private_cache)["geglu cpu (fp32[2,4])"]["winner"] == "second"


def test_clear_forgets_the_file_and_this_process(private_cache):
    op, first, second = geglu_op("first")
    x = torch.randn(2, 4)
    op(x)
    assert private_cache.exists()
    tuning.clear()
    assert not private_cache.exists()
    before = tuning.measurements
    op(x)
    assert tuning.measurements == before + 1


# ---- the real dispatcher: svd_fast.layers through backend "auto" ----


# The native kernels run OpenMP teams: on a machine with other load, a tiny call can wait tens of ms
# for a descheduled thread, so the real-dispatcher tests slow a candidate by far more than that.
LONG_SLOW_S = 0.3


def _slowed(table: dict, op: str, monkeypatch) -> Counted:
    slow = Counted(table[op], LONG_SLOW_S)
    monkeypatch.setitem(table, op, slow)
    return slow


@pytest.mark.parametrize("slow", ["native", "reference"])
def test_auto_backend_measures_native_against_reference(slow, monkeypatch, private_cache):
    native = native_ops()
    slowed = _slowed(native.OPS if slow == "native" else reference.OPS, "group_norm", monkeypatch)
    kernels.set_backend("auto")
    x = torch.randn(6, 8, 3, 2).contiguous(memory_format=torch.channels_last)
    out = layers.group_norm(x, 2, None, None, 1e-5, True, 3)
    torch.testing.assert_close(out, reference.group_norm(x, 2, None, None, 1e-5, True, 3), atol=2e-5, rtol=1e-5)
    (entry,) = entries(private_cache).values()
    assert set(entry["times_ms"]) == {"native", "reference"}
    assert entry["winner"] == ("reference" if slow == "native" else "native")
    calls = slowed.calls
    layers.group_norm(x, 2, None, None, 1e-5, True, 3)
    assert slowed.calls == calls


def test_list_shows_the_starting_choices_and_the_cache_location(private_cache):
    result = subprocess.run([sys.executable, "-m", "svd_fast.kernels", "--list"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"0 call shapes (0.0 s of timing) in {private_cache}" in result.stdout
    for op in kernels.OPS:
        assert op in result.stdout


# ---- results never depend on the choice ----

FP32 = (2e-5, 1e-5)  # summation order differs between implementations: a few fp32 ulp of O(1) outputs
BF16 = (3e-2, 1.6e-2)  # outputs rounded to bf16 once (2^-8 relative)


def _cl(*shape):
    return torch.randn(shape).contiguous(memory_format=torch.channels_last)


def _qkv(n, s, c):
    fused = torch.randn(n, s, 3 * c)  # views into one projection, as the UNet passes them
    return fused[..., :c], fused[..., c:2 * c], fused[..., 2 * c:]


# op -> [(label, call(fn, *tensors), make tensors)] at odd shapes; every tensor is cast to the tested dtype.
ODD_CASES = {
    "group_norm": [
        ("per-clip-silu-channels-last", lambda fn, x, w, b: fn(x, 3, w, b, 1e-5, True, 3),
         lambda: (_cl(6, 9, 5, 3), torch.randn(9), torch.randn(9))),
        ("per-frame-tokens-no-affine", lambda fn, x: fn(x, 2, None, None, 1e-6, False, None),
         lambda: (torch.randn(5, 6, 7),)),
    ],
    "temporal_conv": [
        ("channels-last-k3", lambda fn, x, w, b: fn(x, w, b, 3),
         lambda: (_cl(6, 5, 3, 7), torch.randn(7, 5, 3, 1, 1), torch.randn(7))),
        ("nchw-k5-no-bias", lambda fn, x, w: fn(x, w, None, 5),
         lambda: (torch.randn(10, 3, 1, 5), torch.randn(4, 3, 5, 1, 1))),
    ],
    "temporal_attention": [
        ("fused-projection-views-T5", lambda fn, q, k, v: fn(q, k, v, 5, 3), lambda: _qkv(10, 3, 24)),
        ("T1", lambda fn, q, k, v: fn(q, k, v, 1, 1), lambda: tuple(torch.randn(3, 2, 16) for _ in range(3))),
    ],
    "spatial_attention": [
        ("cross-attention-odd-lengths", lambda fn, q, k, v: fn(q, k, v, 2),
         lambda: (torch.randn(3, 7, 24), torch.randn(3, 5, 24), torch.randn(3, 5, 24))),
    ],
    "alpha_blend": [
        ("channels-last", lambda fn, a, b, al: fn(a, b, al), lambda: (_cl(6, 5, 3, 3), _cl(6, 5, 3, 3), torch.rand(6))),
    ],
    "alpha_blend_residual": [
        ("tokens", lambda fn, a, b, al: fn(a, b, al),
         lambda: (torch.randn(6, 7, 5), torch.randn(6, 7, 5), torch.rand(6))),
    ],
    "geglu": [("odd-width", lambda fn, x: fn(x), lambda: (torch.randn(3, 5, 22),))],
    "conv3x3": [
        ("channels-last-odd-map", lambda fn, x, w, b: fn(x, w, b),
         lambda: (_cl(3, 5, 7, 3), torch.randn(6, 5, 3, 3) / 4, torch.randn(6))),
        ("nchw-no-bias", lambda fn, x, w: fn(x, w, None), lambda: (torch.randn(2, 17, 2, 5), torch.randn(3, 17, 3, 3) / 8)),
    ],
}
CASE_IDS = [(op, label) for op, cases in ODD_CASES.items() for label, _, _ in cases]


def _backend_fns(op: str) -> dict:
    """name -> callable of op in every backend that runs here (auto: each of its candidates, and itself)."""
    fns = {}
    for backend in ("native", "triton", "auto"):
        if backend == "triton" and not kernels.triton_interpreted() and not torch.cuda.is_available():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing build is reported by the dispatch tests
            kernels.set_backend(backend)
        fns[backend] = kernels.get_op(op)
        if isinstance(fns[backend], tuning.TunedOp):
            fns.update({f"auto:{name}": fn for name, fn in fns[backend].candidates["cpu"]})
    return fns


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,label", CASE_IDS, ids=[f"{op}-{label}" for op, label in CASE_IDS])
def test_every_backend_matches_the_reference(op, label, dtype):
    _, call, make = next(c for c in ODD_CASES[op] if c[0] == label)
    tensors = tuple(t.to(dtype) for t in make())
    expected = call(reference.OPS[op], *(t.float() for t in tensors))
    same_dtype = call(reference.OPS[op], *tensors)
    fns = _backend_fns(op)
    for name, fn in fns.items():
        out = call(fn, *tensors)  # outputs are NaN-prefilled (conftest): an unwritten element fails
        assert out.dtype == dtype, name
        assert_close_to_fp32(out, expected, same_dtype, *(FP32 if dtype == torch.float32 else BF16), f"{op} {name}")
    auto = fns["auto"]
    if isinstance(auto, tuning.TunedOp):  # auto returns exactly what its chosen candidate returns
        (chosen,) = auto._memo_names.values()
        torch.testing.assert_close(call(auto, *tensors), call(auto.options["cpu"][chosen], *tensors), atol=0, rtol=0)


# ---- torch.compile ----


def test_compile_traces_auto_without_timing_or_graph_breaks(monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("timed while torch.compile traced")

    kernels.set_backend("auto")
    monkeypatch.setattr(tuning, "measure", no_timing)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    x = _cl(6, 8, 3, 5).requires_grad_()
    w, b = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)

    def block(x, w, b):
        h = layers.group_norm(x, 2, w, b, 1e-5, True, 3)
        return layers.alpha_blend_residual(h, layers.temporal_conv(h, torch.ones(8, 8, 3, 1, 1) / 24, None, 3),
                                           torch.full((6,), 0.3))

    compiled = torch.compile(block, backend=counter, fullgraph=True)  # fullgraph: a graph break raises
    got = compiled(x, w, b)
    compiled(x, w, b)
    assert counter.frame_count == 1, "recompiled"
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    monkeypatch.setenv("SVD_FAST_TUNE", "0")  # eager comparison with the same (starting) choices
    kernels.set_backend("auto")
    expected = block(x2, w2, b2)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    got.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("winner", ["native", "reference"])
def test_compile_uses_the_cached_choice(winner, monkeypatch):
    native_ops()
    kernels.set_backend("auto")
    loser = "reference" if winner == "native" else "native"
    monkeypatch.setattr(tuning, "measure", lambda candidates, *a: ({winner: 1.0, loser: 2.0}, {}, 1, True))
    x = torch.randn(4, 10)
    layers.geglu(x)  # eager: "measured" (the timer is faked to make `winner` the faster)
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("timed while torch.compile traced"))
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: layers.geglu(t) * 2, backend="aot_eager", fullgraph=True)
    with torch.profiler.profile() as prof:
        got = compiled(x)
    ran_native = any(e.key == "svd_fast_native::geglu_fwd" for e in prof.key_averages())
    assert ran_native == (winner == "native")
    torch.testing.assert_close(got, reference.geglu(x) * 2, atol=1e-5, rtol=1e-5)


def test_compile_with_dynamic_shapes_uses_the_starting_order(monkeypatch):
    """Symbolic sizes cannot key the cache: the starting order is traced, with no graph break."""
    native_ops()
    kernels.set_backend("auto")
    monkeypatch.setattr(tuning, "measure", lambda candidates, *a: ({"reference": 1.0, "native": 2.0}, {}, 1, True))
    for rows in (3, 5):
        layers.geglu(torch.randn(rows, 10))  # eager: the cache now says reference for both shapes
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("timed while torch.compile traced"))
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda t: layers.geglu(t) * 2, backend=counter, fullgraph=True, dynamic=True)
    for rows in (3, 5):
        x = torch.randn(rows, 10)
        with torch.profiler.profile() as prof:
            got = compiled(x)
        assert any(e.key == "svd_fast_native::geglu_fwd" for e in prof.key_averages())  # AUTO_CHOICES: native
        torch.testing.assert_close(got, reference.geglu(x) * 2, atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1


def test_constant_result_mark_is_the_one_torch_sets():
    """kernels.tuning marks its trace-time functions without importing torch._dynamo at import: the
    mark must be exactly what torch.compiler.assume_constant_result puts on a function."""

    def by_torch():
        return 1

    def ours():
        return 1

    torch.compiler.assume_constant_result(by_torch)
    tuning.assume_constant_result(ours)
    assert vars(by_torch) and vars(ours) == vars(by_torch)
    assert vars(tuning._untimed_choice).items() >= vars(by_torch).items()
