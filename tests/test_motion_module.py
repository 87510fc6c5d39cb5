"""Motion modules: the temporal parameters move from one UNet to another, nothing else does, and a
module made for another base is refused with the first mismatch named."""
import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import svd_fast
from svd_fast.config import SVDConfig
from svd_fast.motion_module import MANIFEST_KEY
from svd_fast.unet import VideoUNet
from tests.conftest import randomize_

UNET = SVDConfig.from_name("tiny").unet


def _unet(seed, config=UNET):
    return randomize_(VideoUNet(config).eval(), std=0.1, seed=seed)


def test_a_motion_module_changes_only_the_temporal_parameters(tmp_path):
    source, target = _unet(1), _unet(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    path = tmp_path / "motion.safetensors"
    svd_fast.save_motion_module(source, path)
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    # the file: temporal layers only (by their names in the UNet), and the manifest of the base
    assert keys and all(any(p in k for p in ("temporal_res_block.", "temporal_transformer_blocks.", "time_pos_embed.",
                                             "time_mixer.")) for k in keys)
    assert any("time_mixer.mix_factor" in k for k in keys) and any(".temporal_res_block.conv1." in k for k in keys)
    assert json.loads(meta[MANIFEST_KEY])["base"]["block_out_channels"] == list(UNET.block_out_channels)

    loaded = svd_fast.load_motion_module(target, path)
    assert set(loaded) == keys
    src = source.state_dict()
    changed = 0
    for name, value in target.state_dict().items():  # every parameter compared
        if name in keys:
            torch.testing.assert_close(value, src[name], rtol=0, atol=0)
            changed += not torch.equal(value, before[name])
        else:
            torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert changed == len(keys), "the two UNets differ in every temporal tensor"
    spatial = [k for k in before if k not in keys]
    assert any("transformer_blocks.0.attn1" in k and "temporal" not in k for k in spatial) and any("conv_in" in k for k in spatial)


def test_loading_through_a_pipeline_and_onto_an_adapted_unet(tmp_path):
    from svd_fast import adapters
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_config("tiny", seed=3)
    adapters.attach_lora(pipe.unet, adapters.LoRAConfig(rank=2))  # adapter tensors are not part of a motion module
    path = tmp_path / "motion.safetensors"
    svd_fast.save_motion_module(_unet(1), path)
    svd_fast.load_motion_module(pipe, path)
    torch.testing.assert_close(svd_fast.motion_module.temporal_state_dict(pipe.unet),
                               svd_fast.motion_module.temporal_state_dict(_unet(1)), rtol=0, atol=0)


def test_a_module_for_another_base_names_the_first_mismatch(tmp_path):
    path = tmp_path / "motion.safetensors"
    svd_fast.save_motion_module(_unet(1), path)
    wider = _unet(2, dataclasses.replace(UNET, block_out_channels=(32, 32), num_attention_heads=(1, 1)))
    with pytest.raises(ValueError, match=r"made for a UNet with block_out_channels=\[32, 64\], this one has \[32, 32\]"):
        svd_fast.load_motion_module(wider, path)

    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    first = sorted(tensors)[0]
    bad = tmp_path / "bad.safetensors"
    save_file({k: v for k, v in tensors.items() if k != first}, str(bad), metadata=meta)
    target = _unet(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{first}: missing"):
        svd_fast.load_motion_module(target, bad)
    torch.testing.assert_close(target.state_dict(), before, rtol=0, atol=0)  # nothing changed
    reshaped = dict(tensors, **{first: torch.zeros(tensors[first].numel() + 1)})
    save_file(reshaped, str(bad), metadata=meta)
    with pytest.raises(ValueError, match=rf"{first}: shape"):
        svd_fast.load_motion_module(target, bad)
    save_file(dict(tensors, **{"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}), str(bad), metadata=meta)
    with pytest.raises(ValueError, match="down_blocks.0.resnets.0.conv1.weight: not a temporal parameter"):
        svd_fast.load_motion_module(target, bad)
    save_file(tensors, str(bad))
    with pytest.raises(ValueError, match="not a motion module"):
        svd_fast.load_motion_module(target, bad)
