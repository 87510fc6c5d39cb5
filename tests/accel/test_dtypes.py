"""dtype "auto": chosen from the CPU's detected features (monkeypatched both ways) and the device."""
import pytest
import torch

from svd_fast.accel import dtypes
from svd_fast.pipeline import SVDPipeline


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names):
        monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(("avx2", "avx512f", *names)))

    return set_flags


@pytest.mark.parametrize("feature", ["avx512_bf16", "amx_bf16"])
def test_auto_is_bf16_on_cpus_with_native_bf16(flags, feature):
    flags(feature, "avx512_vnni")
    dtype, why = dtypes.resolve_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and feature in why


def test_auto_is_fp32_on_cpus_that_emulate_bf16(flags):
    flags("avx512_vnni", "avx512bw")  # an Ice Lake Xeon: VNNI but no bf16 instructions
    dtype, why = dtypes.resolve_dtype("auto", "cpu")
    assert dtype == torch.float32 and "no native bf16" in why


def test_auto_on_cuda_is_fp16_unless_the_checkpoint_is_bf16():
    assert dtypes.resolve_dtype("auto", "cuda")[0] == torch.float16
    assert dtypes.resolve_dtype(None, "cuda", checkpoint_dtype=torch.float32)[0] == torch.float16
    assert dtypes.resolve_dtype("auto", "cuda", checkpoint_dtype=torch.bfloat16)[0] == torch.bfloat16


def test_explicit_choices_pass_through_and_bad_names_fail():
    assert dtypes.resolve_dtype("fp16", "cpu") == (torch.float16, "requested")
    assert dtypes.resolve_dtype(torch.bfloat16, "cuda") == (torch.bfloat16, "requested")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        dtypes.resolve_dtype("float8", "cpu")


def test_cpu_flags_are_read_from_this_machine():
    flags = dtypes.cpu_flags()
    if not flags:
        pytest.skip("/proc/cpuinfo has no flags line on this platform")
    assert "sse2" in flags or "asimd" in flags  # every x86-64 (or arm64) CPU has these


@pytest.mark.parametrize("feature,expected", [("avx512_bf16", torch.bfloat16), (None, torch.float32)])
def test_pipeline_loads_in_the_auto_dtype_and_says_why(tmp_path, flags, capsys, feature, expected):
    flags(*([feature] if feature else []))
    SVDPipeline.from_config("tiny").save_pretrained(tmp_path / "m")
    pipe = SVDPipeline.from_pretrained(tmp_path / "m", torch_dtype="auto")
    assert pipe.dtype == expected and pipe.vae.quant_conv.weight.dtype == expected
    assert f"dtype auto -> {dtypes.dtype_name(expected)}" in capsys.readouterr().out


def test_stored_dtype_is_read_from_the_header(tmp_path):
    from svd_fast.pipeline import _stored_dtype

    SVDPipeline.from_config("tiny", torch_dtype=torch.bfloat16).save_pretrained(tmp_path / "m")
    assert _stored_dtype(tmp_path / "m") == torch.bfloat16
    assert _stored_dtype(tmp_path / "missing") is None
