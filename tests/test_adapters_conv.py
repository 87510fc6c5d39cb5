"""LoRA adapters on convolutions (svd_fast.adapters): the spatial 3x3 / 1x1 convs (svd_fast.layers.Conv2d)
and the temporal ResBlocks' (3,1,1) nn.Conv3d. Factors as PEFT stores conv LoRA: A (rank, in, *kernel),
B (out, rank, 1, ..); the adapted weight is W + c * (B.flatten(1) @ A.flatten(1)).reshape(W.shape).

References are plain PyTorch: F.conv2d / F.conv3d in float64 with the merged weight computed here,
and a plain UNet whose conv weights are overwritten with it. Tolerances as tests/test_adapters.py
(fp32: 1e-6 on weights, 1e-5 on UNet outputs); the fuse / unfuse round trip rounds W + d - d twice.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from svd_fast import adapters, layers
from svd_fast.unet import VideoUNet
from tests.conftest import randomize_
from tests.test_adapters import OUTPUT_TOL, WEIGHT_TOL, _inputs, _unet  # the same tiny UNet and inputs

SPATIAL = "down_blocks.1.resnets.0.spatial_res_block.conv1"     # 3x3, 32 -> 64 (layers.Conv2d)
SHORTCUT = "down_blocks.1.resnets.0.spatial_res_block.conv_shortcut"  # 1x1, 32 -> 64
TEMPORAL = "mid_block.resnets.0.temporal_res_block.conv1"       # (3,1,1), 64 -> 64 (nn.Conv3d)
LINEAR = "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q"
CONVS = (SPATIAL, SHORTCUT, TEMPORAL)


def _factors(model, names=(*CONVS, LINEAR), rank=3, seed=1):
    """Random (A, B) of PEFT's shapes for each layer, built from the layer's own sizes here."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, torch.nn.Linear):
            shape_a, shape_b = (rank, layer.in_features), (layer.out_features, rank)
        else:
            k = tuple(layer.kernel_size)
            shape_a, shape_b = (rank, layer.in_channels, *k), (layer.out_channels, rank, *[1] * len(k))
        out[name] = (torch.randn(shape_a, generator=g) * 0.3, torch.randn(shape_b, generator=g) * 0.3)
    return out


def _merged(model, factors, c):
    """{layer: W + c * B @ A} in float64, reshaped to W (the plain-PyTorch reference)."""
    out = {}
    for name, (a, b) in factors.items():
        w = model.get_submodule(name)._parameters["weight"].detach().double()
        out[name] = (w + c * (b.double().reshape(b.shape[0], -1) @ a.double().reshape(a.shape[0], -1)).reshape(w.shape))
    return out


def _peft(factors, form="peft", alpha=None):
    sd = {}
    for name, (a, b) in factors.items():
        if form == "peft":  # PEFT's own model state dict: adapter name inside the key
            sd[f"base_model.model.{name}.lora_A.default.weight"], sd[f"base_model.model.{name}.lora_B.default.weight"] = a, b
        else:
            sd[f"unet.{name}.lora.down.weight"], sd[f"unet.{name}.lora.up.weight"] = a, b
        if alpha is not None:
            sd[f"unet.{name}.alpha"] = torch.tensor(float(alpha))
    return sd


def test_presets_select_convs_only_when_asked():
    model = _unet()
    linear = adapters.target_names(model, adapters.LoRAConfig(targets=("all_linear",)))
    both = adapters.target_names(model, adapters.LoRAConfig(targets=("all_linear_conv",)))
    temporal = adapters.target_names(model, adapters.LoRAConfig(targets=("temporal",)))
    convs = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in linear)
    assert sorted(both) == sorted(linear + convs) and SPATIAL in both and TEMPORAL in both
    assert TEMPORAL in temporal and SPATIAL not in temporal and LINEAR in temporal
    assert adapters.target_names(model, adapters.LoRAConfig(targets=("all_linear", "conv:*.conv_shortcut"))) \
        == [n for n in both if n in linear or n.endswith("conv_shortcut")]


@pytest.mark.parametrize("name", CONVS)
def test_conv_lora_forward_is_the_plain_conv_with_the_merged_weight(name):
    model = _unet()
    factors = _factors(model, (name,))
    adapters.load_adapter(model, _peft(factors, alpha=6.0), "zoom", scale=0.5)
    layer = model.get_submodule(name)
    assert isinstance(layer, adapters.LoRALayer) and isinstance(layer, type(_unet().get_submodule(name)))
    want = _merged(_unet(), factors, 0.5 * 6.0 / 3)[name]
    torch.testing.assert_close(layer.weight, want.float(), **WEIGHT_TOL)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if layer.weight.ndim == 4:
            x = torch.randn(2, layer.in_channels, 6, 6, generator=g)
            ref = F.conv2d(x.double(), want, layer.bias.double(), padding=layer.padding)
            torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-5)
        else:  # the UNet reads the temporal conv's .weight into layers.temporal_conv (frame-major (B*T, C, H, W))
            x = torch.randn(2 * 4, layer.in_channels, 3, 3, generator=g)
            clips = x.double().reshape(2, 4, -1, 3, 3).transpose(1, 2)
            ref = F.conv3d(clips, want, layer.bias.double(), padding=(1, 0, 0)).transpose(1, 2).reshape(8, -1, 3, 3)
            torch.testing.assert_close(layers.temporal_conv(x, layer.weight, layer.bias, 4).double(), ref,
                                       rtol=1e-5, atol=1e-5)


def test_unet_with_conv_and_linear_adapters_equals_a_plain_copy_and_fuse_round_trips(tmp_path):
    model = _unet()
    factors = _factors(model)
    adapters.load_adapter(model, _peft(factors, form="old"), "zoom", scale=0.7)
    want = _merged(_unet(), factors, 0.7)
    plain = _unet()
    with torch.no_grad():
        for name, w in want.items():
            plain.get_submodule(name).weight.copy_(w.float())
    x = _inputs()
    with torch.no_grad():
        adapted = model(*x)
        torch.testing.assert_close(adapted, plain(*x), **OUTPUT_TOL)
        assert (adapted - _unet()(*x)).abs().max() > 1e-3, "the conv adapters must change the output"

    base = adapters.base_state_dict(_unet())
    adapters.fuse(model)
    with torch.no_grad():
        torch.testing.assert_close(model(*x), adapted, **OUTPUT_TOL)
    for name in CONVS:
        torch.testing.assert_close(model.get_submodule(name)._parameters["weight"], want[name].float(), **WEIGHT_TOL)
    adapters.unfuse(model)
    torch.testing.assert_close(adapters.base_state_dict(model), base, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(*x), adapted, **OUTPUT_TOL)

    path = tmp_path / "zoom.safetensors"  # our format keeps the conv-shaped factors and reads back exactly
    adapters.save_lora(model, path, "zoom")
    fresh = _unet()
    adapters.load_adapter(fresh, path, "again", scale=0.7)
    for name in CONVS:
        torch.testing.assert_close(fresh.get_submodule(name).weight, model.get_submodule(name).weight, rtol=0, atol=0)
    adapters.unload(model)
    assert not adapters.adapted_layers(model)
    assert [type(model.get_submodule(n)) for n in CONVS] == [type(_unet().get_submodule(n)) for n in CONVS]


def test_attach_trains_conv_factors_from_an_unchanged_model(tmp_path):
    model = _unet()
    names = adapters.attach_lora(model, adapters.LoRAConfig(rank=4, alpha=4.0, targets=("temporal",)))
    assert TEMPORAL in names and SPATIAL not in names
    layer = model.get_submodule(TEMPORAL)
    assert tuple(layer.lora_A_default.shape) == (4, 64, 3, 1, 1) and tuple(layer.lora_B_default.shape) == (64, 4, 1, 1, 1)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(*x), _unet()(*x), rtol=0, atol=0)  # B = 0
    model(*x).square().mean().backward()
    assert layer.lora_A_default.grad is None or layer.lora_A_default.grad.abs().max() == 0  # B = 0: no gradient to A
    assert layer.lora_B_default.grad.abs().max() > 0
    path = tmp_path / "ours.safetensors"
    adapters.save_lora(model, path)
    config, tensors = adapters.read_lora(path)
    assert config.targets == ("temporal",) and tensors[f"{TEMPORAL}.lora_A_default"].ndim == 5
    other = _unet()
    adapters.load_lora(other, path)  # the config's patterns select the same layers, conv ones included
    assert sorted(adapters.adapted_layers(other)) == sorted(names)


@pytest.mark.parametrize("key,a,b,message", [
    ("A", (3, 32, 1, 1), (64, 3, 1, 1), "lora_A (3, 32, 1, 1) / lora_B (64, 3, 1, 1) do not fit " + SPATIAL),
    ("A", (3, 32 * 9), (64, 3), "lora_A (3, 288) / lora_B (64, 3) do not fit " + SPATIAL),
    ("B", (3, 32, 3, 3), (64, 3, 3, 3), "lora_A (3, 32, 3, 3) / lora_B (64, 3, 3, 3) do not fit " + SPATIAL),
])
def test_a_wrong_shaped_conv_key_is_a_one_line_error_naming_it(key, a, b, message):
    model = _unet()
    sd = _peft(_factors(model))
    sd[f"base_model.model.{SPATIAL}.lora_A.default.weight"] = torch.zeros(a)
    sd[f"base_model.model.{SPATIAL}.lora_B.default.weight"] = torch.zeros(b)
    with pytest.raises(ValueError) as err:
        adapters.load_adapter(model, sd)
    text = str(err.value)
    assert f"base_model.model.{SPATIAL}.lora_A.default.weight: " in text and message in text, text
    assert "Conv2d of 32 -> 64, kernel (3, 3)" in text and "\n" not in text
    assert not adapters.adapted_layers(model), "a failed load leaves the model unchanged"


def test_peft_conv_file_with_metadata_alpha_loads(tmp_path):
    from safetensors.torch import save_file

    model = _unet()
    factors = _factors(model, CONVS, rank=4)
    sd = {k.replace("base_model.model.", "unet.").replace(".default", ""): v.contiguous() for k, v in _peft(factors).items()}
    path = tmp_path / "pytorch_lora_weights.safetensors"
    meta = {adapters.DIFFUSERS_METADATA_KEY: json.dumps({"unet.r": 4, "unet.lora_alpha": 2.0,
                                                         "unet.alpha_pattern": {"temporal_res_block.conv1": 8.0}})}
    save_file(sd, str(path), metadata=meta)
    adapters.load_adapter(model, path, "zoom")
    base = _unet()
    for name in CONVS:
        want = _merged(base, {name: factors[name]}, (8.0 if name == TEMPORAL else 2.0) / 4)[name]
        torch.testing.assert_close(model.get_submodule(name).weight, want.float(), **WEIGHT_TOL)


# ----------------------------------------------------------------------- kernels and int8 with conv adapters
@pytest.mark.parametrize("made_in", ["no_grad", "inference_mode"])
def test_winograd_weight_cache_never_serves_a_stale_conv_weight(made_in):
    """The native 3x3 conv caches the Winograd transform of a frozen weight, keyed on the weight
    tensor's version and storage. With a conv adapter the kernel must see the adapted weight after
    every change: scale, disable, fuse, unfuse. Weights made under inference_mode have no version
    counter, so an in-place fuse would leave the cached transform of the unfused weight (caught here)."""
    from svd_fast import kernels
    from svd_fast.kernels.native import ops

    previous = kernels.get_backend()
    kernels.set_backend("native")
    try:
        assert kernels._load_native() is not None, "native kernels (svd_fast._C) not built: run scripts/setup.sh"
        context = torch.inference_mode if made_in == "inference_mode" else torch.no_grad
        g = torch.Generator().manual_seed(0)
        with context():
            model = torch.nn.Module()
            model.conv = layers.Conv2d(16, 16, 3, padding=1)
            model.requires_grad_(False)  # frozen: what the cache serves
            x = torch.randn(1, 16, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
            a, b = torch.randn(2, 16, 3, 3, generator=g) * 0.3, torch.randn(16, 2, 1, 1, generator=g) * 0.3
            adapters.load_adapter(model, {"conv.lora_A": a, "conv.lora_B": b}, "zoom")
            base_w = model.conv._parameters["weight"].detach().double().clone()
            bias = model.conv.bias.detach().double()

            def reference(c):
                w = base_w + c * (b.double().flatten(1) @ a.double().flatten(1)).reshape(base_w.shape)
                return F.conv2d(x.double(), w, bias, padding=1)

            def check(c):
                torch.testing.assert_close(model.conv(x).double(), reference(c), rtol=1e-4, atol=1e-4)

            adapters.set_enabled(model, False)
            check(0.0)
            check(0.0)  # served from the cache now
            assert ops.winograd_weight_bytes() > 0, "the base weight's transform is cached"
            adapters.set_enabled(model, True)
            check(1.0)
            adapters.set_adapters(model, ["zoom"], [-0.5])
            check(-0.5)
            adapters.fuse(model, lora_scale=2.0)
            check(-1.0)
            check(-1.0)
            adapters.unfuse(model)
            adapters.set_enabled(model, False)
            check(0.0)
    finally:
        kernels.set_backend(previous)


def test_int8_takes_fused_conv_adapters_and_refuses_unfused_ones():
    """quantize_unet packs each conv's `.weight` once: unfused adapters are refused, fused ones are in
    the int8 weights (spatial Int8Conv2d and the temporal ResBlock's Int8TemporalConv)."""
    from svd_fast.accel import quantize  # needs torchao (test extras) and oneDNN (every x86 CPU build of torch)
    from tests.test_quantize import WIDE  # wide enough (>= MIN_WIDTH channels) for the convs to be quantized

    spatial, temporal = "down_blocks.1.resnets.0.spatial_res_block.conv1", "down_blocks.1.resnets.0.temporal_res_block.conv1"

    def unet():
        return randomize_(VideoUNet(WIDE).eval(), std=0.05, seed=0)

    model = unet()
    factors = _factors(model, (spatial, temporal), rank=4)
    adapters.load_adapter(model, _peft(factors), "zoom", scale=1.0)
    with pytest.raises(ValueError, match="fuse_lora"):
        quantize.quantize_unet(model)
    adapters.fuse(model)
    fused = {n: model.get_submodule(n)._parameters["weight"].detach().clone() for n in (spatial, temporal)}
    plain = {n: unet().get_submodule(n).weight.detach() for n in (spatial, temporal)}
    bias = {n: model.get_submodule(n).bias.detach() for n in (spatial, temporal)}
    undo = quantize.quantize_unet(model)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(6, 64, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
        h = torch.randn(6, 128, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
        int8_spatial = model.get_submodule(spatial)
        block = model.get_submodule(temporal.rsplit(".", 1)[0])
        assert isinstance(int8_spatial, quantize.Int8Conv2d) and isinstance(block, quantize.Int8TemporalResnetBlock)
        with torch.no_grad():
            cases = [(int8_spatial(x), *(F.conv2d(x, w[spatial], bias[spatial], padding=1) for w in (fused, plain))),
                     (block.conv1(h, 3), *(layers.temporal_conv(h, w[temporal], bias[temporal], 3) for w in (fused, plain)))]
        for got, want, without in cases:  # int8 of the fused weight: near it, far from the weight without the adapter
            assert (got - want).abs().max() < 0.2 * (want - without).abs().max()
    finally:
        quantize.dequantize_unet(undo)
    assert isinstance(model.get_submodule(spatial), adapters.LoRAConv2d)
    adapters.unfuse(model)
    torch.testing.assert_close(model.get_submodule(spatial)._parameters["weight"], plain[spatial], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- through the pipeline
def test_pipeline_conv_lora_fuses_and_drops_graphs_and_compiled_code(tmp_path):
    """A conv LoRA file through SVDPipeline: fused and unfused give the same video, disabled gives
    the base's exactly; loading it drops captured graphs, switching it recompiles a compiled UNet."""
    from safetensors.torch import save_file

    from svd_fast.accel.compile import CompiledModule
    from svd_fast.accel.graphs import EagerCapture, GraphedModule
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_config("tiny", seed=0)
    randomize_(pipe.unet, std=0.1)
    pipe.set_progress_bar_config(disable=True)

    def video():
        return pipe(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)), height=32, width=32,
                    num_frames=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="pt").frames

    unet = pipe.unet
    plain = video()
    path = tmp_path / "zoom.safetensors"
    factors = _factors(unet, (SPATIAL, TEMPORAL, "conv_in"), rank=4)
    save_file({k.replace("base_model.model.", "unet."): v.contiguous() for k, v in _peft(factors).items()}, str(path))
    pipe.unet = GraphedModule(unet, capture=EagerCapture(), warmup=0)
    video()
    assert pipe.unet.stats["entries"] > 0
    pipe.load_lora_weights(path, adapter_name="zoom")
    assert pipe.unet.stats["entries"] == 0 and adapters.plain_unet(pipe) is unet
    adapted = video()
    assert (adapted - plain).abs().max() > 1e-3
    pipe.fuse_lora()
    torch.testing.assert_close(video(), adapted, rtol=1e-4, atol=1e-4)
    pipe.unfuse_lora()
    pipe.disable_lora()
    torch.testing.assert_close(video(), plain, rtol=0, atol=1e-4)  # the ulps of W + d - d
    pipe.enable_lora()
    compiled = CompiledModule(unet, "cpu")
    pipe.unet = compiled
    pipe.set_adapters(["zoom"], [0.3])
    assert isinstance(pipe.unet, CompiledModule) and pipe.unet is not compiled and pipe.unet.inner is unet
