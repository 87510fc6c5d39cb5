"""python -m svd_fast.convert: layout conversion, dtype casting, EMA selection and clean failures."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from svd_fast.checkpoints import load_components, save_components
from svd_fast.convert import main
from svd_fast.unet import VideoUNet
from tests.conftest import randomize_
from tests.test_checkpoints import _assert_same_weights, _snapshot, _tiny_pipeline


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    pipe = _tiny_pipeline(seed=5)
    folder = tmp_path_factory.mktemp("convert") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_diffusers_to_sgm_and_back_is_exact(source, tmp_path, capsys):
    pipe, folder = source
    sgm_file, back = tmp_path / "svd.safetensors", tmp_path / "back"
    assert main([str(folder), str(sgm_file), "--to", "sgm"]) == 0
    assert f"wrote sgm checkpoint {sgm_file}" in capsys.readouterr().out
    assert main([str(sgm_file), str(back), "--to", "diffusers"]) == 0
    _assert_same_weights(load_components(back), pipe)
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "image_encoder/model.safetensors"):  # file-level: the same tensors as diffusers wrote
        ours, theirs = load_file(back / name), load_file(folder / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_dtype_cast(source, tmp_path):
    out = tmp_path / "bf16.safetensors"
    assert main([str(source[1]), str(out), "--to", "sgm", "--dtype", "bf16"]) == 0
    tensors = load_file(out)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    reference = source[0].unet.state_dict()["conv_in.weight"].to(torch.bfloat16)
    assert torch.equal(tensors["model.diffusion_model.input_blocks.0.0.weight"], reference)


def test_ema_selects_the_ema_unet(source, tmp_path):
    parts = load_components(source[1])
    ema = randomize_(VideoUNet(parts["config"].unet), std=0.1, seed=11)
    with_ema, out = tmp_path / "ema.safetensors", tmp_path / "out"
    save_components(parts, with_ema, layout="sgm", ema_unet=ema)
    assert main([str(with_ema), str(out), "--to", "diffusers", "--ema"]) == 0
    converted = load_components(out)
    assert all(torch.equal(a, b) for a, b in zip(converted["unet"].state_dict().values(), ema.state_dict().values()))
    for name in ("vae", "image_encoder"):
        ours, expected = converted[name].state_dict(), parts[name].state_dict()
        assert all(torch.equal(ours[k], expected[k]) for k in expected)


def test_failures_exit_nonzero_name_the_file_and_write_nothing(source, tmp_path, capsys):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    out = tmp_path / "out.safetensors"
    assert main([str(damaged), str(out), "--to", "sgm"]) == 1
    assert f"error: {damaged}: corrupt safetensors header" in capsys.readouterr().err
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    before = _snapshot(existing)
    assert main([str(source[1]), str(existing), "--to", "diffusers"]) == 1
    assert "already exists" in capsys.readouterr().err and _snapshot(existing) == before
    assert main([str(source[1]), str(tmp_path / "x.ckpt"), "--to", "sgm"]) == 1
    assert "written as .safetensors" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.safetensors", "existing"]


def test_module_entry_point(source, tmp_path):
    out = tmp_path / "svd.safetensors"
    result = subprocess.run([sys.executable, "-P", "-m", "svd_fast.convert", str(source[1]), str(out), "--to", "sgm"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_weights(load_components(out), source[0])
