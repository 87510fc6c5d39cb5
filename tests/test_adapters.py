"""LoRA adapters at inference (svd_fast.adapters through SVDPipeline): file formats, several
adapters at once, fuse / unfuse, the CLI's --lora, and the fast paths that must not go stale.

References are computed independently: W + alpha / r * B @ A in float64 from the tensors put into
the state dict, and a plain copy of the UNet whose Linear weights are overwritten with that sum.

Tolerances (fp32 throughout):
- adapted weight vs the float64 reference: 1e-6 absolute (one fp32 matmul of rank <= 4 plus an add);
- UNet output with adapters vs the plain copy: 1e-5 (the same weights reach the kernels by the
  property instead of as stored; the sum rounds once to fp32 either way, then identical ops);
- fuse then unfuse: W + d - d rounds twice in fp32, so |error| <= 2 ulp(|W| + |d|) ~ 1e-6 here.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from svd_fast import adapters, sample
from svd_fast.config import SVDConfig
from svd_fast.pipeline import SVDPipeline
from svd_fast.unet import VideoUNet
from tests.conftest import randomize_

UNET = SVDConfig.from_name("tiny").unet
LAYERS = ("down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q",
          "up_blocks.1.attentions.0.temporal_transformer_blocks.0.attn1.to_out.0")
WEIGHT_TOL = dict(rtol=0, atol=1e-6)
OUTPUT_TOL = dict(rtol=1e-5, atol=1e-5)


def _unet(seed=0):
    return randomize_(VideoUNet(UNET).eval(), std=0.1, seed=seed)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 3, 8, 8, 8, generator=g), torch.tensor([0.4]),
            torch.randn(1, 1, UNET.cross_attention_dim, generator=g), torch.tensor([[6.0, 100.0, 0.02]]))


def _factors(model, rank=3, seed=1, layers=LAYERS):
    """Random (A, B) for each layer: what a trained LoRA holds."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    return {name: (torch.randn(rank, modules[name].in_features, generator=g) * 0.3,
                   torch.randn(modules[name].out_features, rank, generator=g) * 0.3) for name in layers}


def _expected_weights(model, terms):
    """{layer: W + sum c * B @ A} in float64 from the base model's W (terms: [(coefficient, factors)])."""
    modules = dict(model.named_modules())
    out = {}
    for name in terms[0][1]:
        w = modules[name]._parameters["weight"].detach().double().clone()
        for c, factors in terms:
            a, b = factors[name]
            w += c * (b.double() @ a.double())
        out[name] = w.float()
    return out


def _plain_copy_with(weights, seed=0):
    """A plain UNet (no adapters) whose Linear weights are overwritten: the reference network."""
    plain = _unet(seed)
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, w in weights.items():
            modules[name].weight.copy_(w)
    return plain


def _diffusers_state_dict(factors, form="peft", alpha=None):
    """A LoRA state dict named as diffusers saves this UNet's adapters."""
    sd = {}
    for name, (a, b) in factors.items():
        if form == "peft":
            sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"] = a, b
        else:  # diffusers' older attention-processor-free form
            sd[f"unet.{name}.lora.down.weight"], sd[f"unet.{name}.lora.up.weight"] = a, b
        if alpha is not None:
            sd[f"unet.{name}.alpha"] = torch.tensor(float(alpha))
    return sd


# ------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("form,alpha_via", [("peft", "keys"), ("old", "keys"), ("peft", "metadata"), ("peft", "none")])
def test_diffusers_state_dicts_load_with_their_alpha(tmp_path, form, alpha_via):
    model = _unet()
    factors = _factors(model, rank=4)
    alpha = 2.0
    sd = _diffusers_state_dict(factors, form, alpha if alpha_via == "keys" else None)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    meta = {}
    if alpha_via == "metadata":  # diffusers' save_lora_weights: the PEFT LoraConfig, keys prefixed 'unet.'
        # the second layer gets its own alpha through alpha_pattern
        meta = {adapters.DIFFUSERS_METADATA_KEY: json.dumps({"unet.r": 4, "unet.lora_alpha": alpha,
                                                             "unet.alpha_pattern": {LAYERS[1]: 8.0}})}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    name = adapters.load_adapter(model, path, "motion", scale=1.0)
    assert name == "motion"
    modules = dict(model.named_modules())
    for layer in LAYERS:
        layer_alpha = {"keys": alpha, "metadata": 8.0 if layer == LAYERS[1] else alpha, "none": 4.0}[alpha_via]
        want = _expected_weights(_unet(), [(layer_alpha / 4, {layer: factors[layer]})])[layer]
        torch.testing.assert_close(modules[layer].weight, want, **WEIGHT_TOL)
    untouched = "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_k"
    torch.testing.assert_close(modules[untouched].weight, dict(_unet().named_modules())[untouched].weight, rtol=0, atol=0)


def test_peft_raw_names_and_our_file_read_the_same(tmp_path):
    model = _unet()
    factors = _factors(model)
    raw = {}
    for name, (a, b) in factors.items():  # a PEFT-injected model's own state dict, adapter name inside
        raw[f"base_model.model.{name}.lora_A.default.weight"], raw[f"base_model.model.{name}.lora_B.default.weight"] = a, b
    adapters.load_adapter(model, raw, "peft")
    path = tmp_path / "ours.safetensors"
    adapters.save_lora(model, path, "peft")
    config, tensors = adapters.read_lora(path, "x")
    assert set(tensors) == {f"{n}.lora_{r}_x" for n in LAYERS for r in "AB"}
    other = _unet()
    adapters.load_adapter(other, path, "again")
    for layer in LAYERS:  # alpha = rank (no alpha given): scale 1, kept by the file's config
        torch.testing.assert_close(dict(other.named_modules())[layer].weight, dict(model.named_modules())[layer].weight,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("mutate,message", [
    (lambda sd: sd.update({"unet.down_blocks.0.nothing.lora_A.weight": torch.zeros(3, 8),
                           "unet.down_blocks.0.nothing.lora_B.weight": torch.zeros(8, 3)}),
     "unet.down_blocks.0.nothing.lora_A.weight: names no Linear layer"),
    (lambda sd: sd.update({f"unet.{LAYERS[0]}.lora_A.weight": torch.zeros(3, 5)}), f"unet.{LAYERS[0]}.lora_A.weight: lora_A"),
    (lambda sd: sd.update({f"unet.{LAYERS[0]}.lora_magnitude_vector": torch.zeros(8)}), "lora_magnitude_vector: not a LoRA tensor"),
    (lambda sd: sd.pop(f"unet.{LAYERS[1]}.lora_B.weight"), "has lora_A but no lora_B"),
])
def test_bad_keys_are_one_line_errors_naming_the_key(mutate, message):
    model = _unet()
    sd = _diffusers_state_dict(_factors(model))
    mutate(sd)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")) as err:
        adapters.load_adapter(model, sd)
    assert "\n" not in str(err.value)
    assert not adapters.adapted_layers(model), "a failed load leaves the model unchanged"


# --------------------------------------------------------------------------- several at once
def test_two_adapters_combine_as_the_weighted_sum_of_their_products():
    model = _unet()
    first, second = _factors(model, seed=1), _factors(model, seed=2, rank=2)
    adapters.load_adapter(model, _diffusers_state_dict(first), "pan", scale=0.7)
    adapters.load_adapter(model, _diffusers_state_dict(second, alpha=4.0), "zoom", scale=-0.4)
    assert adapters.active_adapters(model) == ["pan", "zoom"]
    want = _expected_weights(_unet(), [(0.7 * 1.0, first), (-0.4 * 4.0 / 2, second)])
    modules = dict(model.named_modules())
    for layer in LAYERS:
        torch.testing.assert_close(modules[layer].weight, want[layer], **WEIGHT_TOL)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(*x), _plain_copy_with(want)(*x), **OUTPUT_TOL)

    adapters.set_adapters(model, ["zoom"], [1.0])
    assert adapters.active_adapters(model) == ["zoom"]
    only_zoom = _expected_weights(_unet(), [(4.0 / 2, second)])
    torch.testing.assert_close(modules[LAYERS[0]].weight, only_zoom[LAYERS[0]], **WEIGHT_TOL)
    adapters.set_enabled(model, False)
    assert adapters.active_adapters(model) == []
    torch.testing.assert_close(modules[LAYERS[0]].weight, dict(_unet().named_modules())[LAYERS[0]].weight, rtol=0, atol=0)
    adapters.set_enabled(model, True)
    with pytest.raises(ValueError, match="unknown adapter 'tilt'"):
        adapters.set_adapters(model, ["tilt"])


def test_small_scales_add_up_in_the_unet_output():
    """At small scales the network is linear in the weights: the output change of both adapters is
    the sum of each one's change (to second order in the scale)."""
    model = _unet()
    layers = adapters.target_names(model, adapters.LoRAConfig(targets=("attention",)))  # spatial ones move it more
    first, second = _factors(model, seed=1, layers=layers), _factors(model, seed=2, layers=layers)
    adapters.load_adapter(model, _diffusers_state_dict(first), "a")
    adapters.load_adapter(model, _diffusers_state_dict(second), "b")
    x = _inputs()
    outputs = {}
    with torch.no_grad():
        for active in ([], ["a"], ["b"], ["a", "b"]):
            adapters.set_adapters(model, active, 0.02)
            outputs[tuple(active)] = model(*x).double()
    base = outputs[()]
    da, db, both = (outputs[k] - base for k in (("a",), ("b",), ("a", "b")))
    assert da.abs().max() > 1e-4 and db.abs().max() > 1e-4, "each adapter must change the output"
    assert (both - da - db).abs().max() < 0.05 * both.abs().max()


# ----------------------------------------------------------------------------- round trips
def test_save_load_fuse_unfuse_round_trips(tmp_path):
    model = _unet()
    adapters.load_adapter(model, _diffusers_state_dict(_factors(model), alpha=6.0), "motion", scale=0.5)
    x = _inputs()
    with torch.no_grad():
        adapted = model(*x)
    path = tmp_path / "motion.safetensors"
    adapters.save_lora(model, path, "motion")
    saved = adapters.adapter_state_dict(model, "motion")
    fresh = _unet()
    adapters.load_adapter(fresh, path, "motion", scale=0.5)
    torch.testing.assert_close(adapters.adapter_state_dict(fresh, "motion"), saved, rtol=0, atol=0)  # exact
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x), adapted, rtol=0, atol=0)

    base = adapters.base_state_dict(_unet())
    adapters.fuse(fresh)
    assert adapters.is_fused(fresh)
    with pytest.raises(ValueError, match="unfuse_lora"):
        adapters.set_adapters(fresh, ["motion"], 1.0)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x), adapted, **OUTPUT_TOL)
    adapters.unfuse(fresh)
    torch.testing.assert_close(adapters.base_state_dict(fresh), base, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x), adapted, **OUTPUT_TOL)

    adapters.fuse(fresh, lora_scale=2.0)  # diffusers: the fused effect is lora_scale times the adapters'
    adapters.unload(fresh)  # fuse then unload keeps the effect, with plain Linear layers
    assert not adapters.adapted_layers(fresh) and adapters.adapter_names(fresh) == []
    twice = _unet()
    adapters.load_adapter(twice, path, "motion", scale=1.0)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x), twice(*x), **OUTPUT_TOL)


# ------------------------------------------------------------------------- through the pipeline
@pytest.fixture
def tiny_pipe():
    pipe = SVDPipeline.from_config("tiny", seed=0)
    randomize_(pipe.unet, std=0.1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _video(pipe):
    return pipe(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)), height=32, width=32, num_frames=3,
                num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").frames


def _lora_file(tmp_path, pipe, name, seed, layers=LAYERS):
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in _diffusers_state_dict(_factors(pipe.unet, seed=seed, layers=layers)).items()},
              str(path))
    return path


def test_pipeline_methods_follow_diffusers(tmp_path, tiny_pipe):
    pipe = tiny_pipe
    plain, weights = _video(pipe), {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    assert pipe.load_lora_weights(_lora_file(tmp_path, pipe, "pan", 1)) == "default_0"
    pipe.load_lora_weights(_lora_file(tmp_path, pipe, "zoom", 2), adapter_name="zoom", scale=0.5)
    assert pipe.get_active_adapters() == ["default_0", "zoom"]
    assert pipe.get_list_adapters() == {"unet": ["default_0", "zoom"]}
    both = _video(pipe)
    assert (both - plain).abs().max() > 1e-3
    pipe.disable_lora()
    torch.testing.assert_close(_video(pipe), plain, rtol=0, atol=0)
    pipe.enable_lora()
    pipe.fuse_lora()
    torch.testing.assert_close(_video(pipe), both, **OUTPUT_TOL)
    pipe.save_pretrained(tmp_path / "fused")  # the fused weights, without adapter tensors
    torch.testing.assert_close(_video(SVDPipeline.from_pretrained(tmp_path / "fused")), both, **OUTPUT_TOL)
    pipe.unfuse_lora()
    with pytest.raises(ValueError, match="not fused"):
        pipe.save_pretrained(tmp_path / "unfused")
    pipe.set_adapters(["zoom"], [0.5])
    only_zoom = _video(pipe)
    pipe.delete_adapters("default_0")
    torch.testing.assert_close(_video(pipe), only_zoom, rtol=0, atol=0)
    pipe.unload_lora_weights()
    assert pipe.get_active_adapters() == [] and not adapters.adapted_layers(pipe.unet)
    torch.testing.assert_close(pipe.unet.state_dict(), weights, rtol=0, atol=1e-6)  # W + d - d of fuse / unfuse
    torch.testing.assert_close(_video(pipe), plain, rtol=0, atol=1e-4)  # those ulps through sampling and decoding


def test_adapter_changes_drop_captured_graphs_and_compiled_code(tmp_path, tiny_pipe):
    """A captured graph replays the adapter ops it recorded; compiled code with frozen weights
    holds the old weights as constants: both are dropped when adapters change."""
    from svd_fast.accel.compile import CompiledModule
    from svd_fast.accel.graphs import EagerCapture, GraphedModule

    pipe = tiny_pipe
    unet = pipe.unet
    lora = _lora_file(tmp_path, pipe, "pan", 1)
    pipe.unet = GraphedModule(unet, capture=EagerCapture(), warmup=0)
    _video(pipe)
    assert pipe.unet.stats["entries"] > 0
    pipe.load_lora_weights(lora)
    assert pipe.unet.stats["entries"] == 0 and adapters.plain_unet(pipe) is unet
    compiled = CompiledModule(unet, "cpu")
    pipe.unet = compiled
    pipe.set_adapters(["default_0"], [0.3])
    assert isinstance(pipe.unet, CompiledModule) and pipe.unet is not compiled and pipe.unet.inner is unet


# ------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    SVDPipeline.from_config("tiny", seed=0).save_pretrained(path)
    return path


def test_cli_lora_flags(tmp_path, model_dir, capsys):
    pipe = SVDPipeline.from_config("tiny", seed=0)
    pan = _lora_file(tmp_path, pipe, "pan", 1)
    zoom = _lora_file(tmp_path, pipe, "zoom", 2)
    assert sample.parse_lora(str(pan)) == (pan, 1.0)
    assert sample.parse_lora(f"{zoom}:-0.5") == (zoom, -0.5)
    image = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    common = ["--model", str(model_dir), "--image", str(image), "--frames", "2", "--steps", "1",
              "--height", "32", "--width", "32", "--dtype", "fp32"]
    out = tmp_path / "o.gif"
    assert sample.main([*common, "--out", str(out), "--lora", str(pan), "--lora", f"{zoom}:0.5"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "adapter pan_0" in printed and "scale 0.5 (adapter zoom_1)" in printed
    for flag, message in [(f"{pan}:abc", "the scale after ':' must be a number"), (f"{pan}:inf", "finite"),
                          (str(tmp_path / "missing.safetensors"), "no such file")]:
        assert sample.cli([*common, "--out", str(out), "--lora", flag]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --lora") and message in err and err.count("\n") == 1
    not_lora = tmp_path / "not_lora.safetensors"
    save_file({"down_blocks.0.weight": torch.zeros(2)}, str(not_lora))
    assert sample.cli([*common, "--out", str(out), "--lora", str(not_lora)]) == 2
    err = capsys.readouterr().err
    assert "down_blocks.0.weight: not a LoRA tensor" in err and err.count("\n") == 1
