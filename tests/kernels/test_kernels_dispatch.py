"""Backend dispatch: names, SVD_FAST_BACKEND, 'auto' choices, fallbacks with one message, --list."""
import subprocess
import sys
import warnings

import pytest
import torch

from svd_fast import kernels, layers
from svd_fast.kernels import reference
from kernel_test_utils import native_ops


@pytest.fixture(autouse=True)
def restore_backend():
    """Each test starts from a fresh dispatcher state and leaves the previous backend in place."""
    saved = (kernels._backend, kernels._table, kernels._choices, set(kernels._warned))
    kernels._warned.clear()
    yield
    kernels._backend, kernels._table, kernels._choices = saved[:3]
    kernels._warned.clear()
    kernels._warned.update(saved[3])



def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="reference, triton, native, auto"):
        kernels.set_backend("cuda")


def test_environment_variable_sets_the_starting_backend(monkeypatch):
    kernels._backend = None
    monkeypatch.setenv("SVD_FAST_BACKEND", "reference")
    assert kernels.get_backend() == "reference"
    kernels._backend = None
    monkeypatch.setenv("SVD_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="SVD_FAST_BACKEND='fastest'"):
        kernels.get_backend()


def test_default_backend_is_auto(monkeypatch):
    kernels._backend = None
    monkeypatch.delenv("SVD_FAST_BACKEND", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a missing native build is reported; not the point here
        assert kernels.get_backend() == "auto"


def test_importing_the_package_does_not_import_triton_or_the_extension():
    result = _python("-c", "import sys, svd_fast.kernels, svd_fast.layers; "
                     "print('triton' in sys.modules, 'svd_fast._C' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_reference_backend_returns_the_reference_functions():
    kernels.set_backend("reference")
    for op in kernels.OPS:
        assert kernels.get_op(op) is reference.OPS[op]


def test_missing_native_build_falls_back_with_one_message(monkeypatch):
    from svd_fast.kernels import native

    def missing():
        raise ImportError("native extension svd_fast._C is not available (test)")

    monkeypatch.setattr(native, "load", missing)
    with pytest.warns(RuntimeWarning, match="not available"):
        kernels.set_backend("native")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second switch stays quiet
        kernels.set_backend("auto")
    x = torch.randn(4, 6, 2, 2)
    torch.testing.assert_close(layers.group_norm(x, 3, None, None, 1e-5, True, 2),
                               reference.group_norm(x, 3, None, None, 1e-5, True, 2))
    assert all(impl == "reference" for op, device, impl, _ in kernels.describe() if device == "cpu")


def test_triton_backend_without_gpu_or_interpreter_falls_back(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: Triton can run")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.warns(RuntimeWarning, match="no CUDA device"):
        kernels.set_backend("triton")
    assert all(impl == "reference" for _, _, impl, _ in kernels.describe())


def test_triton_backend_in_the_interpreter_runs_triton_ops(monkeypatch):
    pytest.importorskip("triton")
    if torch.cuda.is_available():  # seen on an H200: later tests in the process then failed inside Triton
        pytest.skip("with a GPU the Triton tests run the compiled kernels; switching this process to the "
                    "interpreter would leave later-imported kernel modules interpreted")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernels.set_backend("triton")
    x = torch.randn(4, 6, 2, 2)
    with torch.profiler.profile() as prof:
        out = layers.group_norm(x, 3, None, None, 1e-5, True, 2)
    assert any(e.key.startswith("svd_fast_triton::") for e in prof.key_averages())
    torch.testing.assert_close(out, reference.group_norm(x, 3, None, None, 1e-5, True, 2), atol=2e-5, rtol=1e-5)


def test_auto_starts_from_the_static_cpu_choices(monkeypatch):
    """Without measuring (SVD_FAST_TUNE=0) auto runs AUTO_CHOICES' first preference; the measured
    choice is tested in test_kernels_tuning.py."""
    native_ops()  # without the extension auto uses the reference everywhere (tested above)
    monkeypatch.setenv("SVD_FAST_TUNE", "0")
    kernels.set_backend("auto")
    chosen = {op: impl for op, device, impl, _ in kernels.describe() if device == "cpu"}
    expected = {op: prefs[0][0] for (op, device), prefs in kernels.AUTO_CHOICES.items() if device == "cpu"}
    assert chosen == expected
    q = torch.randn(6, 4, 32)
    with torch.profiler.profile() as prof:
        layers.temporal_attention(q, q, q, 3, 2)
    assert any(e.key == "svd_fast_native::temporal_attention_fwd" for e in prof.key_averages())


def test_every_op_and_device_has_a_reason():
    kernels.set_backend("auto")
    rows = kernels.describe()
    assert {(op, device) for op, device, _, _ in rows} == {(op, d) for op in kernels.OPS for d in kernels.DEVICES}
    assert all(reason for *_, reason in rows)


def test_list_command_prints_every_op():
    result = _python("-m", "svd_fast.kernels", "--list")
    assert result.returncode == 0, result.stderr
    for op in kernels.OPS:
        assert op in result.stdout
    assert "backend: auto" in result.stdout


def test_a_missing_native_build_fails_the_tests_where_a_compiler_exists(monkeypatch):
    """The native kernels are part of the product: their tests fail, not skip, when the extension
    is missing on a machine that could have built it."""
    import kernel_test_utils

    import svd_fast.kernels.native as native

    def missing():
        raise ImportError("svd_fast._C not found")

    monkeypatch.setattr(native, "load", missing)
    monkeypatch.setattr(kernel_test_utils, "compiler", lambda: "/usr/bin/c++")
    with pytest.raises(pytest.fail.Exception, match="although /usr/bin/c\\+\\+ is present"):
        native_ops()
    monkeypatch.setattr(kernel_test_utils, "compiler", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="no C\\+\\+ compiler on PATH"):
        native_ops()
