"""Feature caching (svd_fast.accel.feature_cache, DeepCache's scheme) on tiny random models.

References: exact mode of the same pipeline (no cache) and a hand-written step schedule.
"""
import numpy as np
import pytest
import torch

from svd_fast import accelerate, restore
from svd_fast.accel.feature_cache import FeatureCache
from svd_fast.pipeline import SVDPipeline
from tests.parity.test_parity_pipeline import _diffusers_pipeline, _image

KW = dict(height=64, width=64, num_frames=3, max_guidance_scale=2.5, output_type="np")


def _pipe(seed=0):
    pipe = SVDPipeline.from_config("tiny", seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, image, steps=5, seed=1, **kw):
    return pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **{**KW, **kw}).frames


def _full_steps(steps, interval):
    """The schedule written out: steps 0, k, 2k, ... and the last one run the deep part."""
    return sorted({i for i in range(0, steps, interval)} | {steps - 1})


def _count_calls(unet):
    """Per UNet call, which step the cache was at; the steps at which the deep part (mid block) ran."""
    calls, deep = [], []
    unet.conv_in.register_forward_hook(lambda *_: calls.append(unet.feature_cache.step))
    unet.mid_block.register_forward_hook(lambda *_: deep.append(unet.feature_cache.step))
    return calls, deep


def test_interval_1_is_exact_mode_bitwise():
    pipe, image = _pipe(), _image(64, 64, 0)
    exact = _run(pipe, image)
    accelerate(pipe, cache_interval=1)
    np.testing.assert_array_equal(_run(pipe, image), exact)
    assert pipe.unet.feature_cache.calls == {"full": 5, "reused": 0}


@pytest.mark.parametrize("steps,interval", [(7, 3), (8, 3), (5, 2), (4, 5)])
def test_deep_part_runs_on_the_scheduled_steps_only(steps, interval):
    pipe = _pipe()
    accelerate(pipe, cache_interval=interval)
    calls, deep = _count_calls(pipe.unet)
    _run(pipe, _image(64, 64, 0), steps=steps)
    assert calls == list(range(steps))  # the shallow part runs at every step, once (Euler)
    assert deep == _full_steps(steps, interval)  # first, every interval-th and last
    assert pipe.unet.feature_cache.calls == {"full": len(deep), "reused": steps - len(deep)}


def test_heun_calls_of_one_step_share_the_decision():
    """Heun evaluates the UNet twice per step (not on the last): both calls of a step reuse or not."""
    pipe = _pipe()
    accelerate(pipe, cache_interval=2)
    calls, deep = _count_calls(pipe.unet)
    _run(pipe, _image(64, 64, 0), steps=5, sampler="heun")
    assert calls == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert deep == [0, 0, 2, 2, 4]


def test_interval_2_is_close_to_exact_but_not_equal():
    pipe, image = _pipe(), _image(64, 64, 0)
    exact = _run(pipe, image, steps=8)
    another_seed = _run(pipe, image, steps=8, seed=2)
    accelerate(pipe, cache_interval=2)
    cached = _run(pipe, image, steps=8)
    error = np.abs(cached - exact)
    assert error.max() > 1e-3  # the reused features do change the video
    # Measured 2026-12-01 on this tiny random model (8 steps, pixels in [0, 1]): mean 0.0116, max
    # 0.118 (PSNR 35.6 dB); another seed differs from exact by mean 0.085. Reusing the deep
    # features of the step before must perturb the video far less than another noise draw does:
    # at most a third of it on average, and the measured error with a margin of 1.5x.
    assert error.mean() < np.abs(another_seed - exact).mean() / 3
    assert error.mean() < 0.018 and error.max() < 0.18


def test_restore_gives_exact_mode_back():
    pipe, image = _pipe(), _image(64, 64, 0)
    exact = _run(pipe, image)
    unet = pipe.unet
    accelerate(pipe, cache_interval=3)
    assert not np.array_equal(_run(pipe, image), exact)
    assert restore(pipe).unet is unet and unet.feature_cache is None
    np.testing.assert_array_equal(_run(pipe, image), exact)


def test_a_new_call_never_reuses_the_last_videos_features():
    """After a run on another image (and one stopped half-way), the first step of a new run is
    computed in full: its latents equal exact mode's bitwise."""
    pipe = _pipe()
    first_step = {}

    def keep_first(p, i, t, values):
        if i == 0:
            first_step["latents"] = values["latents"].clone()
        return {}

    image = _image(64, 64, 5)
    _run(pipe, image, steps=6, callback_on_step_end=keep_first)
    expected = first_step.pop("latents")
    accelerate(pipe, cache_interval=3)
    _run(pipe, _image(64, 64, 6), steps=6, seed=2)  # another video, its deep features stored

    def stop_at_step_4(p, i, t, values):
        if i == 4:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):  # a run interrupted while features are stored
        _run(pipe, _image(64, 64, 7), steps=6, callback_on_step_end=stop_at_step_4)
    _run(pipe, image, steps=6, callback_on_step_end=keep_first)
    torch.testing.assert_close(first_step["latents"], expected, rtol=0, atol=0)


def test_unet_outside_a_run_or_with_another_shape_computes_everything():
    pipe = _pipe()
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)

    def inputs(batch, frames=3, side=8):
        return (torch.randn(batch, frames, 8, side, side, generator=g), torch.tensor(0.3),
                torch.randn(batch, 1, 32, generator=g), torch.randn(batch, 3, generator=g))

    a, b = inputs(2), inputs(2, side=6)
    with torch.no_grad():
        exact_a, exact_b = unet(*a), unet(*b)
        cache = accelerate(pipe, cache_interval=4).unet.feature_cache
        torch.testing.assert_close(unet(*a), exact_a, rtol=0, atol=0)  # no run: full
        cache.start_run(10)
        unet(*a)  # step 0: full, stored
        cache.at_step(1)
        # The same input at a reusing step: the stored features are this input's own, so the output
        # must be the full one bitwise (nothing wrote into the stored tensor).
        torch.testing.assert_close(unet(*a), exact_a, rtol=0, atol=0)
        torch.testing.assert_close(unet(*b), exact_b, rtol=0, atol=0)  # another shape: full
        assert cache.calls == {"full": 3, "reused": 1}


def test_diffusers_pipeline_interval_1_exact_interval_k_scheduled_and_restore():
    pipe = _diffusers_pipeline("2lvl-4f")
    pipe.set_progress_bar_config(disable=True)
    image = _image(64, 64, 0)
    kw = dict(height=64, width=64, num_frames=4, num_inference_steps=5, max_guidance_scale=2.5, output_type="np")

    def run(seed=3):
        return pipe(image, generator=torch.Generator().manual_seed(seed), **kw).frames

    diffusers_own = run()
    accelerate(pipe)
    exact = run()
    accelerate(pipe, cache_interval=1)
    np.testing.assert_array_equal(run(), exact)

    accelerate(pipe, cache_interval=3)
    unet = pipe.unet.inner
    calls, deep = _count_calls(unet)
    cached = run()
    assert calls == list(range(5)) and deep == _full_steps(5, 3)
    assert 1e-4 < np.abs(cached - exact).max() < 0.1
    calls.clear(), deep.clear()
    np.testing.assert_array_equal(run(), cached)  # a second call starts afresh: the same video again
    assert deep == _full_steps(5, 3)

    restore(pipe)
    assert "forward" not in vars(pipe.unet)
    np.testing.assert_allclose(run(), diffusers_own, rtol=0, atol=1e-6)


def test_bad_arguments_are_clear_errors():
    pipe = _pipe()
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="cache_interval must be an integer >= 1"):
            accelerate(pipe, cache_interval=bad)
    with pytest.raises(ValueError, match="cache_branch must be at most 2"):
        accelerate(pipe, cache_interval=2, cache_branch=3)
    with pytest.raises(ValueError, match="cannot be combined with compile"):
        accelerate(pipe, cache_interval=2, compile=True)
    accelerate(pipe, cache_interval=2)
    with pytest.raises(ValueError, match="cannot be combined with compile"):
        accelerate(pipe, compile=True)


def test_schedule_of_the_cache_alone():
    cache = FeatureCache(3)
    assert cache.is_full_step()  # outside a run
    cache.start_run(7)
    full = []
    for step in range(7):
        cache.at_step(step)
        full.append(cache.is_full_step())
    assert full == [True, False, False, True, False, False, True]
    cache.at_step(7)  # the run is over
    assert cache.steps is None and cache.is_full_step()
