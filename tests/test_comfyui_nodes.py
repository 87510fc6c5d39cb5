"""The ComfyUI nodes called the way ComfyUI's executor calls them (validate the inputs against
INPUT_TYPES, then getattr(node(), FUNCTION)(**inputs), a tuple of len(RETURN_TYPES) back), with
their IMAGE outputs checked against direct SVDPipeline calls."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from svd_fast.sample import DEFAULT_MODEL
from svd_fast.video_io import load_image

EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "example.png"
PRIMITIVES = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
SMALL = dict(seed=5, steps=3, frames=4, fps=8, motion_bucket_id=127, min_cfg=1.0, max_cfg=2.0,
             augmentation_level=0.02)


def execute(class_type: str, **inputs):
    """One node as ComfyUI's execution.py runs it: required inputs present, INT/FLOAT converted
    and held to min/max, choices in their list (else ValueError, as ComfyUI refuses the prompt);
    then the FUNCTION call, whose result must be a tuple of len(RETURN_TYPES)."""
    cls = NODE_CLASS_MAPPINGS[class_type]
    spec = cls.INPUT_TYPES()
    missing = [name for name in spec["required"] if name not in inputs]
    if missing:
        raise ValueError(f"required input missing: {missing}")
    declared = {**spec["required"], **spec.get("optional", {})}
    for name, value in inputs.items():
        kind, options = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
        if kind in ("INT", "FLOAT"):
            value = inputs[name] = PRIMITIVES[kind](value)
            if "min" in options and value < options["min"]:
                raise ValueError(f"{name}: value {value} smaller than min of {options['min']}")
            if "max" in options and value > options["max"]:
                raise ValueError(f"{name}: value {value} bigger than max of {options['max']}")
        elif isinstance(kind, list) and value not in kind:
            raise ValueError(f"{name}: {value!r} not in {kind}")
    result = getattr(cls(), cls.FUNCTION)(**inputs)
    assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES)
    return result


def comfy_image(*images: Image.Image) -> torch.Tensor:
    """PIL images as ComfyUI's LoadImage hands them on: float32 (B, H, W, 3) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB")).astype(np.float32) / 255.0 for i in images]))


def make_lora_file(unet: torch.nn.Module, path: Path, seed: int = 0, std: float = 0.1) -> Path:
    """An svd_fast LoRA file (rank 4, temporal attention) with random, non-zero factors for `unet`."""
    from svd_fast.adapters import LoRAConfig, save_lora_tensors, target_names

    config = LoRAConfig(rank=4, alpha=4.0)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in target_names(unet, config):
        layer = unet.get_submodule(name)
        tensors[f"{name}.lora_A"] = torch.randn(config.rank, layer.in_features, generator=generator) * std
        tensors[f"{name}.lora_B"] = torch.randn(layer.out_features, config.rank, generator=generator) * std
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_tensors(tensors, config, path)
    return path


@pytest.fixture(scope="module")
def reference():
    """A pipeline of its own for the direct calls (fp32, as the loader node below)."""
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def loaded():
    (pipeline,) = execute("SVDFastLoader", model_path="", dtype="fp32", device="cpu")
    return pipeline


def direct(pipe, image, last=None, **settings) -> torch.Tensor:
    s = {"image_init_sigma": None, "keep_first_frame": False, **SMALL, **settings}
    out = pipe(image, last_image=last, num_frames=s["frames"], num_inference_steps=s["steps"], fps=s["fps"],
               motion_bucket_id=s["motion_bucket_id"], min_guidance_scale=s["min_cfg"],
               max_guidance_scale=s["max_cfg"], noise_aug_strength=s["augmentation_level"],
               height=pipe.config.height, width=pipe.config.width, image_init_sigma=s["image_init_sigma"],
               keep_first_frame=s["keep_first_frame"], generator=torch.Generator().manual_seed(s["seed"]),
               output_type="np")
    return torch.from_numpy(out.frames[0])


def test_node_contract():
    assert set(NODE_DISPLAY_NAME_MAPPINGS) <= set(NODE_CLASS_MAPPINGS)
    produced = {t for cls in NODE_CLASS_MAPPINGS.values() for t in cls.RETURN_TYPES}
    for class_type, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert isinstance(spec, dict) and "required" in spec and set(spec) <= {"required", "optional", "hidden"}
        for name, entry in {**spec["required"], **spec.get("optional", {})}.items():
            assert isinstance(entry, tuple) and len(entry) in (1, 2), (class_type, name)
            kind, options = entry[0], (entry[1] if len(entry) == 2 else {})
            assert isinstance(options, dict)
            if isinstance(kind, list):  # a choice widget
                assert kind and all(isinstance(c, str) for c in kind) and options.get("default", kind[0]) in kind
            elif kind in PRIMITIVES:
                default = options["default"]
                assert type(default) is PRIMITIVES[kind], (class_type, name, default)
                assert options.get("min", default) <= default <= options.get("max", default), (class_type, name)
            else:  # a link: IMAGE, or a type one of the nodes returns
                assert kind == "IMAGE" or kind in produced, (class_type, name, kind)
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert isinstance(cls.CATEGORY, str) and cls.CATEGORY
        # the executor passes every required input, and optional ones when given, as keywords
        parameters = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        assert set(parameters) - {"self"} == set(spec["required"]) | set(spec.get("optional", {})), class_type
        for name in spec.get("optional", {}):
            assert parameters[name].default is not inspect.Parameter.empty, (class_type, name)
        for name in spec["required"]:
            assert parameters[name].default is inspect.Parameter.empty, (class_type, name)


def test_sampler_matches_the_pipeline(loaded, reference):
    image = load_image(EXAMPLE)
    (frames,) = execute("SVDFastSampler", pipeline=loaded, image=comfy_image(image), **SMALL)
    assert frames.dtype == torch.float32 and frames.shape == (SMALL["frames"], 64, 64, 3)
    assert 0 <= frames.min() and frames.max() <= 1
    torch.testing.assert_close(frames, direct(reference, image), rtol=0, atol=1e-6)


def test_sampler_keeps_the_image_when_asked(loaded, reference):
    """The sampler node's image_init_sigma / keep_first_frame widgets reach the pipeline."""
    image = load_image(EXAMPLE)
    (frames,) = execute("SVDFastSampler", pipeline=loaded, image=comfy_image(image), image_init_sigma=3.0,
                        keep_first_frame=True, **SMALL)
    torch.testing.assert_close(frames, direct(reference, image, image_init_sigma=3.0, keep_first_frame=True),
                               rtol=0, atol=1e-6)
    assert (frames - direct(reference, image)).abs().max() > 0.05  # not the pure-noise video


def test_sampler_camera_input_reaches_the_pipeline(loaded, reference):
    """The optional camera string (comma-separated moves) is pipe(camera=[...])."""
    image = load_image(EXAMPLE)
    (frames,) = execute("SVDFastSampler", pipeline=loaded, image=comfy_image(image), camera="zoom_in, pan_left:0.02",
                        **SMALL)
    want = reference(image, num_frames=SMALL["frames"], num_inference_steps=SMALL["steps"], fps=SMALL["fps"],
                     motion_bucket_id=SMALL["motion_bucket_id"], max_guidance_scale=SMALL["max_cfg"],
                     height=64, width=64, camera=["zoom_in", "pan_left:0.02"],
                     generator=torch.Generator().manual_seed(SMALL["seed"]), output_type="np").frames[0]
    torch.testing.assert_close(frames, torch.from_numpy(want), rtol=0, atol=1e-6)
    assert (frames - direct(reference, image)).abs().max() > 0.05
    with pytest.raises(ValueError, match="camera move must be one of"):
        execute("SVDFastSampler", pipeline=loaded, image=comfy_image(image), camera="dolly", **SMALL)


def test_out_of_range_inputs_are_refused_like_comfyui(loaded):
    image = comfy_image(load_image(EXAMPLE))
    for bad, message in ((dict(frames=0), "frames: value 0 smaller than min of 1"),
                         (dict(max_cfg=1000.0), "max_cfg: value 1000.0 bigger than max of 30.0"),
                         (dict(speed_mode="turbo"), "speed_mode: 'turbo' not in")):
        with pytest.raises(ValueError, match=message):
            execute("SVDFastSampler", pipeline=loaded, image=image, **{**SMALL, **bad})


def test_speed_modes_match_accelerated_pipeline(loaded, reference):
    from svd_fast.accel import accelerate, restore

    image = load_image(EXAMPLE)
    (cached,) = execute("SVDFastSampler", pipeline=loaded, image=comfy_image(image), **SMALL, speed_mode="cache",
                        cache_interval=2)
    try:
        expected = direct(accelerate(reference, cache_interval=2), image)
    finally:
        restore(reference)
    torch.testing.assert_close(cached, expected, rtol=0, atol=1e-6)
    (exact,) = execute("SVDFastSampler", pipeline=loaded, image=comfy_image(image), **SMALL, speed_mode="exact")
    torch.testing.assert_close(exact, direct(reference, image), rtol=0, atol=1e-6)  # the mode was undone


def test_lora_node_applies_the_adapter_without_changing_its_input(loaded, reference, tmp_path):
    image = load_image(EXAMPLE)
    path = make_lora_file(reference.unet, tmp_path / "motion_lora.safetensors")
    (adapted,) = execute("SVDFastLoRA", pipeline=loaded, lora_name="none", lora_path=str(path), strength=0.7)
    (with_lora,) = execute("SVDFastSampler", pipeline=adapted, image=comfy_image(image), **SMALL)
    reference.load_lora_weights(str(path), adapter_name="test", scale=0.7)
    try:
        expected = direct(reference, image)
    finally:
        reference.unload_lora_weights()
    torch.testing.assert_close(with_lora, expected, rtol=0, atol=1e-6)
    (plain,) = execute("SVDFastSampler", pipeline=loaded, image=comfy_image(image), **SMALL)
    plain_expected = direct(reference, image)
    torch.testing.assert_close(plain, plain_expected, rtol=0, atol=1e-6)  # the loader's output has no adapter
    assert (with_lora - plain_expected).abs().max() > 1e-3  # and the adapter changed the video
    with pytest.raises(ValueError, match="LoRA adapter not found"):
        execute("SVDFastLoRA", pipeline=loaded, lora_name="none", lora_path=str(tmp_path / "none.safetensors"),
                strength=1.0)


def test_interpolation_node_matches_interpolate_between(loaded, reference):
    from svd_fast.interpolate import between

    first = load_image(EXAMPLE)
    last = first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    (frames,) = execute("SVDFastInterpolate", pipeline=loaded, first=comfy_image(first), last=comfy_image(last),
                        **{**SMALL, "frames": 5})
    cfg = reference.config
    expected = between(reference, first, last, 5, seed=SMALL["seed"], height=cfg.height, width=cfg.width,
                       num_inference_steps=SMALL["steps"], fps=SMALL["fps"], motion_bucket_id=SMALL["motion_bucket_id"],
                       max_guidance_scale=SMALL["max_cfg"])
    assert frames.shape == (5, 64, 64, 3)
    torch.testing.assert_close(frames, torch.from_numpy(expected), rtol=0, atol=1e-6)


def test_one_file_custom_node_shim_loads_like_comfyui(tmp_path):
    """The README's install: ComfyUI imports each custom_nodes/*.py by file location and reads
    its NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS."""
    import importlib.util

    shim = tmp_path / "custom_nodes" / "svd_fast_nodes.py"
    shim.parent.mkdir()
    shim.write_text("from svd_fast.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n")
    spec = importlib.util.spec_from_file_location("svd_fast_nodes", shim)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert set(module.NODE_CLASS_MAPPINGS) == {"SVDFastLoader", "SVDFastSampler", "SVDFastLoRA", "SVDFastInterpolate"}
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(module.NODE_CLASS_MAPPINGS)
