"""LoRA: zero start, save / load onto a fresh base, merge / unmerge equality, trainable modes."""
import dataclasses

import pytest
import torch

from svd_fast.config import SVDConfig
from svd_fast.train import lora
from svd_fast.train.trainable import is_temporal, set_trainable
from svd_fast.unet import VideoUNet
from tests.conftest import randomize_

UNET = SVDConfig.from_name("tiny").unet


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 3, 8, 8, 8, generator=g), torch.tensor([0.4]),
            torch.randn(1, 1, UNET.cross_attention_dim, generator=g), torch.tensor([[6.0, 100.0, 0.02]]))


def _base(seed=0):
    torch.manual_seed(seed)
    return randomize_(VideoUNet(UNET).eval(), std=0.1, seed=seed)


def _randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if lora.is_lora_name(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("targets", [("temporal_attention",), ("attention",), ("*.ff.net.2", "*proj_in")])
def test_lora_save_load_merge_unmerge(tmp_path, targets):
    config = lora.LoRAConfig(rank=4, alpha=8.0, targets=targets)
    x = _inputs()
    base = _base()
    with torch.no_grad():
        reference = base(*x)
    adapted = _base()
    names = lora.attach_lora(adapted, config)
    assert names and all(n in dict(adapted.named_modules()) for n in names)
    with torch.no_grad():
        torch.testing.assert_close(adapted(*x), reference, rtol=0, atol=0)  # B = 0: unchanged at start
    _randomize_adapters(adapted)
    with torch.no_grad():
        trained = adapted(*x)
    assert (trained - reference).abs().max() > 1e-3, "the adapters must change the output"
    assert set(lora.base_state_dict(adapted)) == set(base.state_dict()), "base names unchanged"

    path = tmp_path / "adapter.safetensors"
    lora.save_lora(adapted, path)
    fresh = _base()
    assert lora.load_lora(fresh, path) == config
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x), trained, rtol=0, atol=0)
        lora.merge_lora(fresh)
        merged = fresh(*x)
        torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-5)
        lora.unmerge_lora(fresh)
        torch.testing.assert_close(lora.base_state_dict(fresh), base.state_dict(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fresh(*x), trained, rtol=1e-5, atol=1e-6)

    merged_at_load = _base()
    lora.load_lora(merged_at_load, path, merge=True)
    with torch.no_grad():
        torch.testing.assert_close(merged_at_load(*x), merged, rtol=1e-5, atol=1e-6)


def test_lora_file_must_fit_the_model(tmp_path):
    adapted = _base()
    lora.attach_lora(adapted, lora.LoRAConfig(rank=2, targets=("attention",)))
    path = tmp_path / "a.safetensors"
    lora.save_lora(adapted, path)
    other = VideoUNet(dataclasses.replace(UNET, block_out_channels=(32, 32), num_attention_heads=(1, 1)))
    with pytest.raises(ValueError, match="shape"):
        lora.load_lora(other, path)
    with pytest.raises(ValueError, match="no nn.Linear module matches"):
        lora.attach_lora(_base(), lora.LoRAConfig(targets=("nothing.here",)))


def test_trainable_modes_partition_the_unet():
    names = {n for n, _ in VideoUNet(UNET).named_parameters()}
    temporal = set(set_trainable(VideoUNet(UNET), "temporal"))
    spatial = set(set_trainable(VideoUNet(UNET), "spatial"))
    assert temporal and spatial and temporal | spatial == names and not temporal & spatial
    assert all(is_temporal(n) for n in temporal)
    assert any("temporal_transformer_blocks" in n for n in temporal) and any("time_mixer" in n for n in temporal)
    adapters = set_trainable(VideoUNet(UNET), "lora", lora.LoRAConfig(rank=2))
    assert adapters and all(lora.is_lora_name(n) and "temporal_transformer_blocks" in n for n in adapters)
