"""Checkpoint layouts: full-size key sets, exact round trips, and clear errors that change nothing."""
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from svd_fast.checkpoints import CheckpointError, detect_layout, load_components, save_components
from svd_fast.checkpoints import open_clip, sgm
from svd_fast.checkpoints.io import TensorSource, check_plan, read_plan
from svd_fast.clip_vision import CLIPVisionTower
from svd_fast.conditioner import build_image_encoder
from svd_fast.config import ImageEncoderConfig, SVDConfig, VAEConfig
from svd_fast.unet import VideoUNet
from svd_fast.vae import TemporalVAE
from tests.conftest import randomize_

COMPONENTS = ("unet", "vae", "image_encoder")
SVD_SCHEDULER = dict(prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True,
                     sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", steps_offset=1)


def _tiny_pipeline(widths=(32, 64), heads=(1, 2), clip_width=32, clip_heads=2, seed=0):
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=widths, down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=heads,
        layers_per_block=1, cross_attention_dim=16, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        num_frames=3,
    )
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                       layers_per_block=1)
    clip_config = ImageEncoderConfig(hidden_size=clip_width, num_hidden_layers=2, num_attention_heads=clip_heads,
                                     intermediate_size=64, patch_size=16, projection_dim=16)
    clip = CLIPVisionModelWithProjection(clip_config.to_transformers())
    for i, module in enumerate((unet, vae, clip)):
        randomize_(module, std=0.1, seed=seed + i)
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=clip, unet=unet, scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
                                        feature_extractor=CLIPImageProcessor())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random diffusers pipeline and the folder diffusers' save_pretrained made of it."""
    pipe = _tiny_pipeline()
    folder = tmp_path_factory.mktemp("ckpt") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture
def folder(saved, tmp_path):
    """A private copy of the saved pipeline folder, free to damage."""
    return shutil.copytree(saved[1], tmp_path / "pipe")


def _assert_same_weights(ours: dict, reference):
    """Every component's tensors equal exactly (names, dtypes, values)."""
    for name in COMPONENTS:
        got = ours[name].state_dict() if hasattr(ours[name], "state_dict") else ours[name]
        expected = getattr(reference, name).state_dict() if hasattr(reference, name) else reference[name].state_dict()
        assert got.keys() == expected.keys(), name
        for key in got:
            assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), f"{name}: {key}"


def _snapshot(path):
    """Content hash of every file under path (or of path itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def _fails_cleanly(path, match, **kwargs):
    """load_components raises CheckpointError naming `path`'s file and matching `match`; nothing changes."""
    before = _snapshot(path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_components(path, **kwargs)
    assert _snapshot(path) == before
    return str(info.value)


# ------------------------------------------------------------------------------ full-size key sets


def _reference_unet_sgm_to_diffusers(key: str) -> str:
    """diffusers' convert_svd_to_diffusers rules (svd_facts 2.3), written independently, for SVD's
    layout (3 input blocks per level, attention on the first 3 levels)."""
    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    module, param = key.rsplit(".", 1)
    if module in fixed:
        return f"{fixed[module]}.{param}"
    local = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
             "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut"}

    def resnet(rest):
        if rest == "time_mixer.mix_factor":
            return rest
        kind = "temporal_res_block." if rest.startswith("time_stack.") else "spatial_res_block."
        rest = rest.removeprefix("time_stack.")
        old = next(o for o in local if rest.startswith(o + "."))
        return kind + local[old] + rest[len(old):]

    def attention(rest):
        rest = re.sub(r"^time_stack\.", "temporal_transformer_blocks.", rest)
        return re.sub(r"^time_pos_embed\.([02])\.", lambda m: f"time_pos_embed.linear_{int(m[1]) // 2 + 1}.", rest)

    parts = key.split(".")
    rest = ".".join(parts[3:])
    if parts[0] == "input_blocks":
        i = int(parts[1])
        block, layer = (i - 1) // 3, (i - 1) % 3
        if parts[3] == "op":
            return f"down_blocks.{block}.downsamplers.0.conv.{param}"
        kind = "resnets" if parts[2] == "0" else "attentions"
        return f"down_blocks.{block}.{kind}.{layer}." + (resnet(rest) if kind == "resnets" else attention(rest))
    if parts[0] == "middle_block":
        rest = ".".join(parts[2:])
        return "mid_block.attentions.0." + attention(rest) if parts[1] == "1" else f"mid_block.resnets.{int(parts[1]) // 2}." + resnet(rest)
    assert parts[0] == "output_blocks", key
    i = int(parts[1])
    block, layer = i // 3, i % 3
    if parts[3] == "conv":
        return f"up_blocks.{block}.upsamplers.0.conv.{param}"
    kind = "resnets" if parts[2] == "0" else "attentions"
    return f"up_blocks.{block}.{kind}.{layer}." + (resnet(rest) if kind == "resnets" else attention(rest))


@pytest.mark.parametrize("preset", ["svd", "svd_xt"])
def test_full_size_unet_matches_diffusers_and_sgm_naming(preset):
    config = SVDConfig.from_name(preset)
    with torch.device("meta"):
        ours = VideoUNet(config.unet)
        ref = UNetSpatioTemporalConditionModel(num_frames=config.num_frames)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 1_524_623_082 and list(ours.buffers()) == []

    names = {k: sgm.UNET_PREFIX + sgm.unet_key(k, config.unet) for k in shapes}
    assert len(set(names.values())) == 1428  # svd_facts 2.3: 1428 UNet tensors
    for key, name in names.items():  # the diffusers script's rules map every sgm name back
        assert _reference_unet_sgm_to_diffusers(name.removeprefix(sgm.UNET_PREFIX)) == key
    for example in ("input_blocks.1.0.time_stack.in_layers.0.weight", "input_blocks.1.0.time_mixer.mix_factor",
                    "input_blocks.1.0.emb_layers.1.weight", "input_blocks.4.0.skip_connection.weight",
                    "input_blocks.1.1.time_stack.0.norm_in.weight", "input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight",
                    "input_blocks.1.1.time_pos_embed.2.weight", "input_blocks.8.1.time_mixer.mix_factor",
                    "input_blocks.9.0.op.weight", "input_blocks.11.0.time_stack.out_layers.3.weight",
                    "middle_block.1.transformer_blocks.0.attn2.to_v.weight", "output_blocks.2.1.conv.weight",
                    "output_blocks.5.2.conv.bias", "output_blocks.8.2.conv.weight", "output_blocks.11.1.proj_out.weight",
                    "time_embed.2.weight", "label_emb.0.0.weight", "out.2.bias"):
        assert sgm.UNET_PREFIX + example in names.values(), example


def _reference_vae_sgm_to_diffusers(key: str) -> str:
    """svd_facts 2.4's mapping, written in the sgm -> diffusers direction (4 levels)."""
    key = key.removeprefix(sgm.VAE_COND_PREFIX).removeprefix(sgm.VAE_FIRST_STAGE)
    key = re.sub(r"^encoder\.down\.(\d)\.block\.", r"encoder.down_blocks.\1.resnets.", key)
    key = re.sub(r"^encoder\.down\.(\d)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", key)
    key = re.sub(r"^decoder\.up\.(\d)\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.", key)
    key = key.replace(".block.", ".resnets.").replace(".upsample.", ".upsamplers.0.")
    key = key.replace(".mid.block_1.", ".mid_block.resnets.0.").replace(".mid.block_2.", ".mid_block.resnets.1.")
    key = key.replace("decoder.conv_out.time_mix_conv.", "decoder.time_conv_out.").replace("norm_out", "conv_norm_out")
    if ".mid.attn_1." in key:
        module, param = key.split(".mid.attn_1.")[1].rsplit(".", 1)
        module = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[module]
        return key.split(".mid.attn_1.")[0] + f".mid_block.attentions.0.{module}.{param}"
    key = key.replace("nin_shortcut", "conv_shortcut")
    if key.startswith("decoder.") and ".resnets." in key:
        head, rest = re.match(r"(.*\.resnets\.\d+)\.(.*)", key).groups()
        temporal = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2"}
        if rest == "mix_factor":
            return f"{head}.time_mixer.mix_factor"
        if rest.startswith("time_stack."):
            layer, param = rest.removeprefix("time_stack.").rsplit(".", 1)
            return f"{head}.temporal_res_block.{temporal[layer]}.{param}"
        return f"{head}.spatial_res_block.{rest}"
    return key


def test_full_size_vae_sgm_naming():
    config = VAEConfig()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TemporalVAE(config).state_dict().items()}
    places = {k: sgm.vae_file_keys(k, config) for k in shapes}
    flat = [name for names in places.values() for name in names]
    assert len(flat) == len(set(flat))
    assert sum(n.startswith(sgm.VAE_FIRST_STAGE + "encoder.") for n in flat) == 106  # svd_facts 2.1 (no quant_conv)
    assert sum(n.startswith(sgm.VAE_COND_PREFIX) for n in flat) == 108  # + quant_conv weight and bias
    for key, names in places.items():
        assert all(_reference_vae_sgm_to_diffusers(n) == key for n in names), key
    for example in ("first_stage_model.decoder.conv_out.time_mix_conv.weight", "first_stage_model.decoder.up.0.block.2.mix_factor",
                    "first_stage_model.decoder.up.3.upsample.conv.weight", "first_stage_model.decoder.mid.attn_1.proj_out.weight",
                    "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
                    "first_stage_model.decoder.mid.block_2.time_stack.out_layers.3.weight",
                    "conditioner.embedders.3.encoder.quant_conv.weight", "conditioner.embedders.3.encoder.encoder.down.2.downsample.conv.bias"):
        assert example in flat, example
    # sgm's attention projections are 1x1 convs: the plan squeezes them to Linear weights
    plan = sgm.vae_plan(shapes, config)
    source = TensorSource("meta", {plan[k][0][0]: tuple(s) + ((1, 1) if re.search(r"attentions\.0\.to_.*weight", k) else ())
                                   for k, s in shapes.items()}, None)
    check_plan(plan, source, {k: tuple(s) for k, s in shapes.items()}, "VAE")


def test_full_size_clip_open_clip_naming():
    config = SVDConfig().image_encoder  # OpenCLIP ViT-H/14
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_image_encoder(config).state_dict().items()}
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 632_076_800  # svd_facts 1.8 (with proj)
    sgm_shapes = {k: tuple(v.shape) for k, v in open_clip.to_open_clip(
        {k: torch.empty(s, device="meta") for k, s in shapes.items()}).items()}
    p = open_clip.PREFIX
    assert sgm_shapes[p + "proj"] == (1280, 1024) and sgm_shapes[p + "conv1.weight"] == (1280, 3, 14, 14)
    assert sgm_shapes[p + "transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert sgm_shapes[p + "positional_embedding"] == (257, 1280)
    assert len(sgm_shapes) == 8 + 32 * 12
    plan = open_clip.read_plan(shapes)
    check_plan(plan, TensorSource("meta", sgm_shapes, None), shapes, "CLIP")  # every split/transpose lands on its shape


def _open_clip_visual(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """OpenCLIP's VisionTransformer forward (class-token pooling, exact GELU), from its own names."""
    patch = sd["conv1.weight"].shape[-1]
    x = F.conv2d(x, sd["conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    width = x.shape[-1]
    x = torch.cat([sd["class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + sd["positional_embedding"]
    x = F.layer_norm(x, (width,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"]).transpose(0, 1)
        attn, _ = F.multi_head_attention_forward(
            h, h, h, width, heads, sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"], None, None, False, 0.0,
            sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"], need_weights=False)
        x = x + attn.transpose(0, 1)
        h = F.layer_norm(x, (width,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"])
        x = x + F.linear(F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])),
                         sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    return F.layer_norm(x[:, 0], (width,), sd["ln_post.weight"], sd["ln_post.bias"]) @ sd["proj"]


def test_open_clip_weights_give_the_same_embedding_in_transformers():
    config = ImageEncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                patch_size=32, projection_dim=24)
    clip = randomize_(build_image_encoder(config), std=0.05)
    sgm_tensors = open_clip.to_open_clip(clip.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = _open_clip_visual({k.removeprefix(open_clip.PREFIX): v for k, v in sgm_tensors.items()}, x, heads=4)
        got = clip(x).image_embeds
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the read plan inverts the write exactly
    shapes = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    back = read_plan(open_clip.read_plan(shapes), TensorSource.from_state_dict(sgm_tensors, "mem"))
    assert all(torch.equal(back[k], v) for k, v in clip.state_dict().items())


# ------------------------------------------------------------------------------- loading, saving


def test_load_diffusers_folder_is_exact(saved):
    pipe, folder = saved
    assert detect_layout(folder) == "diffusers"
    parts = load_components(folder, numerics="diffusers")
    _assert_same_weights(parts, pipe)
    config = parts["config"]
    assert config.unet.block_out_channels == (32, 64) and config.unet.numerics == "diffusers"
    assert config.num_frames == config.unet.num_frames == 3
    assert config.vae.block_out_channels == (32, 64) and config.image_encoder.hidden_size == 32
    assert parts["scheduler_config"]["prediction_type"] == "v_prediction"
    assert isinstance(parts["unet"], VideoUNet) and isinstance(parts["vae"], TemporalVAE)
    assert isinstance(parts["image_encoder"], CLIPVisionTower)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():  # the rebuilt position ids work: same embedding as diffusers' encoder
        torch.testing.assert_close(parts["image_encoder"](x).image_embeds, pipe.image_encoder(x).image_embeds)


def test_load_casts_dtype(saved):
    parts = load_components(saved[1], dtype=torch.bfloat16, device="cpu")
    for name in COMPONENTS:
        assert {p.dtype for p in parts[name].parameters()} == {torch.bfloat16}
        assert all(p.device.type == "cpu" for p in parts[name].parameters())


def test_round_trip_diffusers_sgm_diffusers_is_exact(saved, tmp_path):
    pipe, folder = saved
    parts = load_components(folder)
    sgm_file = tmp_path / "svd_tiny.safetensors"
    save_components(parts, sgm_file, layout="sgm")
    assert detect_layout(sgm_file) == "sgm"
    keys = load_file(sgm_file).keys()
    assert any(k.startswith("model.diffusion_model.input_blocks.1.0.time_stack.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.down.0.block.0.") for k in keys)
    assert any(k.startswith(open_clip.PREFIX + "transformer.resblocks.1.attn.in_proj_weight") for k in keys)
    from_sgm = load_components(sgm_file)
    assert from_sgm["config"] == parts["config"]
    _assert_same_weights(from_sgm, pipe)
    back = tmp_path / "back"
    save_components(from_sgm, back, layout="diffusers")
    _assert_same_weights(load_components(back), pipe)
    reloaded = StableVideoDiffusionPipeline.from_pretrained(back)  # diffusers reads our folder
    _assert_same_weights({n: getattr(reloaded, n) for n in COMPONENTS}, pipe)
    assert reloaded.scheduler.config.use_karras_sigmas and reloaded.scheduler.config.sigma_max == 700.0


def test_sgm_file_keeps_a_scheduler_that_is_not_svds(saved, tmp_path):
    """A model that samples from another sigma_max (the shipped interpolator: 20) keeps it through the
    sgm layout (metadata) and back to a diffusers folder; SVD's own scheduler adds no metadata."""
    from svd_fast.checkpoints.diffusers import DEFAULT_SCHEDULER_CONFIG
    from svd_fast.checkpoints.io import open_tensors

    parts = load_components(saved[1])
    plain, other = tmp_path / "plain.safetensors", tmp_path / "other.safetensors"
    save_components({**parts, "scheduler_config": dict(DEFAULT_SCHEDULER_CONFIG)}, plain, layout="sgm")
    assert sgm.SCHEDULER_METADATA not in open_tensors(plain).metadata
    assert load_components(plain)["scheduler_config"] == DEFAULT_SCHEDULER_CONFIG
    save_components({**parts, "scheduler_config": {**DEFAULT_SCHEDULER_CONFIG, "sigma_max": 20.0}}, other, layout="sgm")
    assert load_components(other)["scheduler_config"]["sigma_max"] == 20.0
    save_components(load_components(other), tmp_path / "back", layout="diffusers")
    assert load_components(tmp_path / "back")["scheduler_config"]["sigma_max"] == 20.0


def test_sgm_file_without_our_metadata_gets_its_config_from_shapes(tmp_path):
    """A foreign sgm file carries no config: widths, levels and layers come from shapes, heads
    assume 64 channels (as all SVD releases), the frame count comes from the name."""
    pipe = _tiny_pipeline(widths=(64, 128), heads=(1, 2), clip_width=64, clip_heads=1)
    parts = {n: getattr(pipe, n) for n in COMPONENTS}
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    expected = load_components(folder)["config"]
    ours = tmp_path / "ours.safetensors"
    save_components({"config": expected, **parts}, ours, layout="sgm")
    foreign = tmp_path / "svd_xt_like.safetensors"
    save_file(load_file(ours), foreign)  # the same tensors, no metadata
    loaded = load_components(foreign)
    assert loaded["config"].unet == dataclasses.replace(expected.unet, num_frames=25)
    assert loaded["config"].vae == expected.vae and loaded["config"].image_encoder == expected.image_encoder
    assert loaded["config"].num_frames == 25
    _assert_same_weights(loaded, pipe)


def test_ema_weights_both_layouts(saved, tmp_path):
    pipe, folder = saved
    parts = load_components(folder)
    ema = randomize_(VideoUNet(parts["config"].unet), std=0.1, seed=9)
    for layout, path in (("sgm", tmp_path / "ema.safetensors"), ("diffusers", tmp_path / "ema")):
        save_components(parts, path, layout=layout, ema_unet=ema)
        if layout == "sgm":  # LitEma names: parameter of DiffusionEngine.model with the dots removed
            assert "model_ema.diffusion_modelinput_blocks10time_stackin_layers0weight" in load_file(path)
        with_ema = load_components(path, use_ema=True)
        assert all(torch.equal(a, b) for a, b in zip(with_ema["unet"].state_dict().values(), ema.state_dict().values()))
        _assert_same_weights(load_components(path), pipe)  # without use_ema: the regular weights
    message = _fails_cleanly(folder, "no EMA weights", use_ema=True)
    assert str(folder) in message


def test_sharded_and_bin_weights_load(saved, folder):
    pipe = saved[0]
    unet_dir = folder / "unet"
    state = load_file(unet_dir / "diffusion_pytorch_model.safetensors")
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"unet-1.safetensors": keys[:half], "unet-2.safetensors": keys[half:]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, unet_dir / name)
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (unet_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(pipe.vae.state_dict(), folder / "vae" / "diffusion_pytorch_model.bin")
    _assert_same_weights(load_components(folder), pipe)


# ------------------------------------------------------------------------------------ bad inputs


class _NotATensor:
    pass


def test_missing_and_damaged_files_name_the_file(folder, tmp_path):
    assert str(tmp_path / "nope") in _fails_cleanly(tmp_path / "nope", "no such file")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    assert str(weights) in _fails_cleanly(folder, "truncated safetensors file")
    weights.write_bytes((10**9).to_bytes(8, "little") + data[8:])
    _fails_cleanly(folder, "header claims 1000000000 bytes")
    weights.write_bytes(data[:8] + b"\xff" * (len(data) - 8))
    _fails_cleanly(folder, "corrupt safetensors header")
    weights.write_bytes(b"abc")
    _fails_cleanly(folder, "too short for a safetensors file")
    weights.unlink()
    _fails_cleanly(folder, "no weights file")


def test_pickles_are_never_executed(folder):
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"weight": torch.zeros(1), "payload": _NotATensor()}, folder / "vae" / "diffusion_pytorch_model.bin")
    message = _fails_cleanly(folder, "refused to unpickle")
    assert "diffusion_pytorch_model.bin" in message
    weights = folder / "vae" / "diffusion_pytorch_model.bin"
    torch.save({"weight": torch.zeros(1000)}, weights)
    weights.write_bytes(weights.read_bytes()[:-300])
    _fails_cleanly(folder, "cannot read torch file")


def test_wrong_architecture_says_what_it_looks_like(folder, tmp_path):
    unet2d = UNet2DConditionModel(block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=16,
                                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1)
    save_file(unet2d.state_dict(), folder / "unet" / "diffusion_pytorch_model.safetensors")
    _fails_cleanly(folder, r"not a SVD UNet checkpoint: it looks like a diffusers 2-D UNet")
    sd_file = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.transformer.x": torch.zeros(1)}, sd_file)
    _fails_cleanly(sd_file, r"image \(2-D\) LDM/sgm UNet")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    _fails_cleanly(other, "is a StableDiffusionPipeline, expected StableVideoDiffusionPipeline")
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**vae_config, "_class_name": "AutoencoderKL"}))
    _fails_cleanly(folder, "image-decoder variant is not supported")
    _fails_cleanly(folder / "unet", "no model_index.json")


def test_bad_config_files_name_the_file(folder):
    unet_config = folder / "unet" / "config.json"
    original = unet_config.read_text()
    unet_config.write_text("{ not json")
    assert str(unet_config) in _fails_cleanly(folder, "not valid JSON")
    unet_config.write_text(json.dumps({**json.loads(original), "up_block_types": ["UpBlockSpatioTemporal"] * 2}))
    assert str(unet_config) in _fails_cleanly(folder, "unsupported UNet block layout")
    unet_config.write_text(original)
    clip_config = folder / "image_encoder" / "config.json"
    clip_config.write_text(json.dumps({**json.loads(clip_config.read_text()), "hidden_size": 31}))  # not divisible by its 2 heads
    assert str(clip_config) in _fails_cleanly(folder, "invalid CLIP vision config")
    clip_config.write_text(json.dumps({**json.loads(clip_config.read_text()), "hidden_size": 32}))
    defaults = folder / "svd_fast_sampling.json"
    defaults.write_text(json.dumps({"height": "tall"}))
    assert str(defaults) in _fails_cleanly(folder, "height must be a non-negative int")
    defaults.write_text(json.dumps({"motion_bucket_id": 12.5}))
    assert str(defaults) in _fails_cleanly(folder, "motion_bucket_id must be a non-negative int")
    defaults.write_text(json.dumps({"conditioning": "audio"}))
    assert str(defaults) in _fails_cleanly(folder, "conditioning must be one of")
    defaults.unlink()


def test_missing_unexpected_and_misshapen_tensors_are_listed(folder):
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    broken = dict(state)
    del broken["decoder.time_conv_out.weight"], broken["quant_conv.bias"]
    broken["decoder.extra.weight"] = torch.zeros(1)
    save_file(broken, weights)
    message = _fails_cleanly(folder, r"2 missing \(e.g. decoder.time_conv_out.weight, quant_conv.bias\); "
                                     r"1 unexpected \(e.g. decoder.extra.weight\)")
    assert str(weights) in message
    save_file({**state, "quant_conv.weight": torch.zeros(8, 8, 3, 3)}, weights)
    _fails_cleanly(folder, r"quant_conv.weight: checkpoint \[8, 8, 3, 3\] vs model \[8, 8, 1, 1\]")


def test_sgm_files_report_sgm_names(saved, tmp_path):
    sgm_file = tmp_path / "svd.safetensors"
    save_components(load_components(saved[1]), sgm_file, layout="sgm")
    tensors = load_file(sgm_file)
    metadata = {"svd_fast_config": sgm.config_to_json(load_components(sgm_file)["config"])}
    damaged = tmp_path / "damaged.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.endswith("time_mix_conv.bias")}, damaged, metadata=metadata)
    _fails_cleanly(damaged, r"1 missing \(e.g. first_stage_model.decoder.conv_out.time_mix_conv.bias\)")
    proj = open_clip.PREFIX + "proj"
    save_file({**tensors, proj: tensors[proj][:, :8].contiguous()}, damaged, metadata=metadata)
    _fails_cleanly(damaged, r"visual_projection.weight \(from .*proj\): checkpoint \[8, 32\] vs model \[16, 32\]")
    save_file(tensors, damaged, metadata={"svd_fast_config": "{not json"})
    _fails_cleanly(damaged, "corrupt 'svd_fast_config' metadata")
    _fails_cleanly(sgm_file, "no EMA weights", use_ema=True)


def test_saving_never_leaves_partial_output(saved, tmp_path):
    parts = load_components(saved[1])
    target = tmp_path / "out"
    save_components(parts, target)
    before = _snapshot(target)
    with pytest.raises(CheckpointError, match="already exists"):
        save_components(parts, target)
    broken = dict(parts, image_encoder={**parts["image_encoder"].state_dict()})
    broken["image_encoder"]["visual_projection.weight"] = torch.empty(16, 32, device="meta")  # fails mid-write
    with pytest.raises(CheckpointError, match="has no data"):
        save_components(broken, target, overwrite=True)
    assert _snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    wrong = dict(parts, config=SVDConfig.from_name("tiny"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        save_components(wrong, tmp_path / "x.safetensors", layout="sgm")
    with pytest.raises(CheckpointError, match="written as .safetensors"):
        save_components(parts, tmp_path / "x.ckpt", layout="sgm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    save_components(parts, target, overwrite=True)
    _assert_same_weights(load_components(target), parts)


def test_peak_memory_is_about_one_copy(tmp_path):
    """Meta build + assign: loading (and touching every weight) grows peak RSS by about one copy."""
    config = dataclasses.replace(SVDConfig.from_name("tiny"), vae=VAEConfig(block_out_channels=(64, 128, 128, 128)))
    parts = dict(config=config, unet=VideoUNet(config.unet), vae=TemporalVAE(config.vae),
                 image_encoder=build_image_encoder(config.image_encoder))
    path = tmp_path / "big.safetensors"
    save_components(parts, path, layout="sgm")
    script = textwrap.dedent(f"""
        import torch
        from svd_fast.checkpoints import load_components
        def status(field):
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
        load_components({str(path)!r})  # warm up imports and allocator
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS to the current RSS
        before = status("VmRSS:")
        parts = load_components({str(path)!r})
        size = sum(p.numel() * p.element_size() for n in ("unet", "vae", "image_encoder") for p in parts[n].parameters())
        total = sum(float(p.sum()) for n in ("unet", "vae", "image_encoder") for p in parts[n].parameters())
        print(size, status("VmHWM:") - before)
    """)
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    size, peak = map(int, out.stdout.split()[-2:])
    assert size > 30e6 and peak < 1.3 * size, f"weights {size / 2**20:.1f} MiB, peak growth {peak / 2**20:.1f} MiB"


def _group_counts(module):
    return {m.num_groups for m in module.modules() if isinstance(m, torch.nn.GroupNorm)}


@pytest.mark.parametrize("layout", ["diffusers", "sgm"])
def test_group_count_and_sampling_defaults_survive_saving(layout, tmp_path):
    """Narrow models use fewer GroupNorm groups than SVD's 32; the count (which no tensor shape
    records) and the model's sampling defaults come back from both layouts, and the group count
    reaches the computation."""
    tiny = SVDConfig.from_name("tiny")
    config = dataclasses.replace(
        tiny, unet=dataclasses.replace(tiny.unet, norm_num_groups=8), vae=dataclasses.replace(tiny.vae, norm_num_groups=8),
        height=64, width=96, num_inference_steps=7, fps=10, motion_bucket_id=200, max_guidance_scale=2.5,
        conditioning="interpolation",
    )
    unet, vae = randomize_(VideoUNet(config.unet), std=0.1), randomize_(TemporalVAE(config.vae), std=0.1, seed=1)
    assert _group_counts(unet) == _group_counts(vae) == {8}
    parts = {"config": config, "unet": unet, "vae": vae, "image_encoder": build_image_encoder(config.image_encoder)}
    path = tmp_path / ("model" if layout == "diffusers" else "model.safetensors")
    save_components(parts, path, layout=layout)
    loaded = load_components(path)
    assert loaded["config"] == config
    assert _group_counts(loaded["unet"]) == _group_counts(loaded["vae"]) == {8}

    t = 2
    args = (torch.randn(1, t, 8, 4, 4), torch.tensor([0.5]), torch.randn(1, 1, config.unet.cross_attention_dim),
            torch.tensor([[6.0, 127.0, 0.02]]))
    with torch.no_grad():
        expected = unet(*args)
        got = loaded["unet"](*args)
        for module in loaded["unet"].modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.num_groups = 32
        with_svd_groups = loaded["unet"](*args)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # memory formats may differ
    assert (with_svd_groups - expected).abs().max() > 1e-3
    if layout == "diffusers":  # diffusers' classes cannot express it: say so rather than build another model
        from svd_fast.diffusers_bridge import to_diffusers_pipeline
        from svd_fast.pipeline import SVDPipeline

        with pytest.raises(ValueError, match="32 GroupNorm groups"):
            to_diffusers_pipeline(SVDPipeline.from_pretrained(path))
