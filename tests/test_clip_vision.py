"""svd_fast's CLIP image tower against transformers' CLIPVisionModelWithProjection (the independent
reference): same names, same embeddings, same initialisation statistics; config files both read;
and the sampling path no longer imports transformers or torch._dynamo."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from svd_fast.clip_vision import CLIPVisionTower
from svd_fast.config import CLIP_VISION_DEFAULTS, ImageEncoderConfig
from svd_fast.diffusers_bridge import svd_image_encoder, transformers_image_encoder

ODD = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=80, patch_size=7,
           image_size=35, projection_dim=24, layer_norm_eps=1e-5)


def _pair(act: str, seed: int = 0):
    config = ImageEncoderConfig(**ODD, hidden_act=act)
    torch.manual_seed(seed)
    reference = CLIPVisionModelWithProjection(config.to_transformers()).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.2)  # away from the init, so every tensor matters
    ours = CLIPVisionTower(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("act", ["gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_tower_matches_transformers(act):
    reference, ours = _pair(act)
    x = torch.randn(3, 3, 35, 35, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, pooled, got = reference(x).image_embeds, reference.vision_model(x).pooler_output, ours(x)
    torch.testing.assert_close(got.image_embeds, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, pooled, rtol=1e-5, atol=1e-5)


def test_tower_matches_transformers_in_bf16():
    reference, ours = _pair("gelu", seed=2)
    reference, ours = reference.to(torch.bfloat16), ours.to(torch.bfloat16)
    x = torch.randn(2, 3, 35, 35, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = reference(x.bfloat16()).image_embeds.float(), ours(x).image_embeds
    assert got.dtype == torch.bfloat16
    scale = expected.abs().max()
    assert (got.float() - expected).abs().max() <= 0.03 * scale


def test_state_dict_names_and_shapes_are_transformers():
    config = ImageEncoderConfig(**ODD, hidden_act="gelu")
    reference = CLIPVisionModelWithProjection(config.to_transformers())
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in CLIPVisionTower(config).state_dict().items()} == expected


def test_gradients_match_transformers():
    reference, ours = _pair("quick_gelu", seed=4)
    x = torch.randn(2, 3, 35, 35, generator=torch.Generator().manual_seed(5))
    reference(x).image_embeds.square().sum().backward()
    ours(x).image_embeds.square().sum().backward()
    grads = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_initialisation_follows_transformers():
    """Per-tensor mean and standard deviation of a fresh tower against a fresh transformers model
    (the starting point of svd_fast.train.image_encoder)."""
    config = ImageEncoderConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                                patch_size=8, image_size=64, projection_dim=64, hidden_act="gelu")
    torch.manual_seed(0)
    reference = dict(CLIPVisionModelWithProjection(config.to_transformers()).named_parameters())
    for name, p in CLIPVisionTower(config).named_parameters():
        r = reference[name].detach()
        if r.numel() < 64 or r.std() == 0:  # constant tensors (norms, biases): exactly equal
            torch.testing.assert_close(p.detach(), r, msg=name)
            continue
        assert abs(p.std().item() / r.std().item() - 1) < 0.15, name
        assert abs(p.mean().item()) < 0.2 * r.std().item(), name


def test_round_trip_through_transformers_shares_tensors():
    reference, _ = _pair("gelu")
    tower = svd_image_encoder(reference)
    assert tower.visual_projection.weight.data_ptr() == reference.visual_projection.weight.data_ptr()
    back = transformers_image_encoder(tower)
    assert type(back) is CLIPVisionModelWithProjection
    x = torch.randn(1, 3, 35, 35)
    with torch.no_grad():
        torch.testing.assert_close(back(x).image_embeds, reference(x).image_embeds, rtol=0, atol=0)


def test_wrong_pixel_shape_is_a_clear_error():
    _, ours = _pair("gelu")
    with pytest.raises(ValueError, match=r"expected pixel values \(B, 3, 35, 35\)"):
        ours(torch.zeros(1, 3, 36, 36))


def test_config_json_is_read_by_transformers_and_back(tmp_path):
    config = ImageEncoderConfig(**ODD, hidden_act="quick_gelu")
    data = config.to_json_dict("float16")
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = CLIPVisionConfig.from_pretrained(tmp_path)
    assert loaded.architectures == ["CLIPVisionModelWithProjection"] and loaded.num_channels == 3
    assert {k: getattr(loaded, k) for k in CLIP_VISION_DEFAULTS} == {k: getattr(config, k) for k in CLIP_VISION_DEFAULTS}
    assert ImageEncoderConfig.from_transformers(loaded.to_dict()) == config
    assert ImageEncoderConfig.from_transformers(data) == config


def test_missing_entries_take_transformers_defaults():
    reference = CLIPVisionConfig()
    assert ImageEncoderConfig.from_transformers({}) == ImageEncoderConfig(
        **{k: getattr(reference, k) for k in CLIP_VISION_DEFAULTS})
    assert ImageEncoderConfig.from_transformers({"vision_config": {"hidden_size": 64, "num_attention_heads": 4}}).hidden_size == 64


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
    ({"hidden_size": 50}, "not divisible by num_attention_heads"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    ({"patch_size": 64}, "patch_size 64 > image_size 35"),
    ({"layer_norm_eps": "small"}, "layer_norm_eps must be in"),
    ({"num_channels": 1}, "num_channels=1, expected 3"),
])
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        ImageEncoderConfig.from_transformers({**ODD, "hidden_act": "gelu", **change})


def test_old_transformers_position_ids_in_a_folder_are_ignored(tmp_path):
    """transformers < 4.31 saved CLIP's position ids (arange) with the weights: such folders still load."""
    from safetensors.torch import load_file, save_file

    from svd_fast.checkpoints import load_components
    from svd_fast.config import SVDConfig
    from svd_fast.pipeline import SVDPipeline

    config = dataclasses.replace(SVDConfig.from_name("tiny"), image_encoder=ImageEncoderConfig(**ODD, hidden_act="gelu"))
    pipe = SVDPipeline.from_config(config)
    pipe.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "image_encoder" / "model.safetensors"
    tensors = load_file(weights)
    tensors["vision_model.embeddings.position_ids"] = torch.arange(26).expand(1, -1).contiguous()
    save_file(tensors, weights)
    parts = load_components(tmp_path / "model")
    torch.testing.assert_close(parts["image_encoder"].visual_projection.weight, pipe.image_encoder.visual_projection.weight)


def test_sampling_path_imports_neither_transformers_nor_dynamo(tmp_path):
    """Loading the default model and sampling a video must not import transformers (~4 s) or
    torch._dynamo (~1.8 s): they made up most of the CLI's start-up. An empty kernel-choice cache,
    so the first-run path (timing the kernel candidates) is covered too."""
    code = ("import sys, torch; from svd_fast.pipeline import SVDPipeline;"
            "from svd_fast.sample import DEFAULT_MODEL; p = SVDPipeline.from_pretrained(DEFAULT_MODEL); p.set_progress_bar_config(disable=True);"
            "p(torch.rand(3, 64, 64), height=64, width=64, num_frames=4, num_inference_steps=1, output_type='np');"
            "print(sorted(m for m in ('transformers', 'torch._dynamo', 'diffusers') if m in sys.modules))")
    env = {**os.environ, "SVD_FAST_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "kernel_choices.json").is_file()  # the cold path ran
