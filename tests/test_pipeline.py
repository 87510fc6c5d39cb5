"""SVDPipeline behaviour on the tiny architecture: inputs, outputs, options, saving and loading."""
import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast.pipeline import SVDPipeline

KW = dict(height=64, width=64, num_frames=3, num_inference_steps=2)


@pytest.fixture(scope="module")
def pipe():
    p = SVDPipeline.from_config("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _image(mode="RGB", size=(70, 50)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def _run(pipe, image, seed=0, **kw):
    return pipe(image, generator=torch.Generator().manual_seed(seed), output_type="np", **{**KW, **kw}).frames


def test_output_formats_and_shapes(pipe):
    arr = _run(pipe, _image())
    assert arr.shape == (1, 3, 64, 64, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    pt = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="pt", **KW).frames
    assert pt.shape == (1, 3, 3, 64, 64)
    np.testing.assert_allclose(pt.permute(0, 1, 3, 4, 2).numpy(), arr, atol=1e-6)
    latents = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="latent", **KW).frames
    assert latents.shape == (1, 3, 4, 8, 8)


def test_seeded_runs_repeat_and_seeds_differ(pipe):
    a, b, c = _run(pipe, _image(), 1), _run(pipe, _image(), 1), _run(pipe, _image(), 2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_are_converted(pipe, mode):
    assert _run(pipe, _image(mode)).shape == (1, 3, 64, 64, 3)


def test_numpy_tensor_and_pil_inputs_agree(pipe):
    """A float array, a tensor and a PIL image of the same 64x64 pixels give the same video."""
    img = _image(size=(64, 64))
    arr = np.asarray(img).astype(np.float32) / 255
    from_pil = _run(pipe, img)
    from_np = _run(pipe, arr)
    from_pt = _run(pipe, torch.from_numpy(arr).permute(2, 0, 1))
    np.testing.assert_allclose(from_np, from_pt, atol=1e-6)
    np.testing.assert_allclose(from_np, from_pil, atol=1e-5)


def test_batch_and_videos_per_prompt(pipe):
    frames = _run(pipe, [_image(), _image("L")], num_videos_per_prompt=2)
    assert frames.shape == (4, 3, 64, 64, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(height=60), "multiples of 8"), (dict(width=0), "multiples of 8"), (dict(num_frames=0), "num_frames"),
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(decode_chunk_size=0), "decode_chunk_size"),
    (dict(sampler="ddim"), "sampler"), (dict(sigmas=[1.0, 2.0, 0.0]), "decreasing"),
    (dict(latents=torch.zeros(1, 2, 4, 8, 8)), "latents must have shape"),
])
def test_bad_arguments_raise_clear_errors(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(pipe, _image(), **kwargs)


def test_bad_image_raises(pipe):
    with pytest.raises(ValueError):
        _run(pipe, np.zeros((4, 4, 3), dtype=np.float32) + 3.0)  # floats outside [0, 1]
    with pytest.raises(ValueError):
        _run(pipe, "not an image")


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_other_samplers_run_and_stay_close_to_euler_at_more_steps(pipe, sampler):
    euler = _run(pipe, _image(), num_inference_steps=8)
    other = _run(pipe, _image(), num_inference_steps=8, sampler=sampler)
    assert other.shape == euler.shape and np.isfinite(other).all()
    assert np.abs(other - euler).mean() < 0.1  # same ODE, different discretisation


def test_explicit_sigmas_equal_the_default_schedule(pipe):
    from svd_fast.sampling import get_sigmas_karras

    np.testing.assert_array_equal(_run(pipe, _image()), _run(pipe, _image(), sigmas=get_sigmas_karras(2, 0.002, 700.0)))


def test_callback_sees_every_step_and_can_replace_latents(pipe):
    seen = []

    def callback(p, i, sigma, values):
        seen.append((i, float(sigma), values["latents"].shape))
        return {"latents": torch.zeros_like(values["latents"])} if i == 1 else {}

    out = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="latent", callback_on_step_end=callback, **KW)
    assert [s[0] for s in seen] == [0, 1] and seen[0][1] == pytest.approx(700.0)
    assert out.frames.abs().max() == 0  # the last step's latents were replaced by zeros


def test_decode_chunks_and_timings(pipe):
    out = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="np", decode_chunk_size=1, **KW)
    assert set(out.timings) == {"image_encode", "unet_steps", "vae_decode"} and len(out.timings["unet_steps"]) == 2
    assert out.frames.shape == (1, 3, 64, 64, 3)


def test_no_guidance_runs_one_branch(pipe):
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k)
    try:
        _run(pipe, _image(), max_guidance_scale=1.0)
        _run(pipe, _image(), max_guidance_scale=2.0)
    finally:
        pipe.unet.forward = forward
    assert calls == [1, 1, 2, 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_pipelines_stay_close_to_fp32(dtype):
    exact = SVDPipeline.from_config("tiny", seed=0)
    low = SVDPipeline.from_config("tiny", seed=0, torch_dtype=dtype)
    for p in (exact, low):
        p.set_progress_bar_config(disable=True)
    a, b = _run(exact, _image()), _run(low, _image())
    assert np.isfinite(b).all() and np.abs(a - b).mean() < 0.02


@pytest.mark.parametrize("layout,name", [("diffusers", "folder"), ("sgm", "svd_tiny.safetensors")])
def test_save_and_reload_give_the_same_video(pipe, tmp_path, layout, name):
    pipe.save_pretrained(tmp_path / name, layout=layout)
    again = SVDPipeline.from_pretrained(tmp_path / name)
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_run(again, _image()), _run(pipe, _image()))
