"""The compile path (torch.compile with inductor; freezing on CPU): the same video as eager within
fp32 tolerance, no graph breaks, no recompile for a second image of the same shape, no memory
growth across calls, compile time reported, and restore() gives the eager models back."""
import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from svd_fast import accel
from svd_fast.accel.compile import CompiledModule
from svd_fast.pipeline import SVDPipeline
from svd_fast.unet import VideoUNet
from tests.conftest import randomize_

KWARGS = dict(height=64, width=64, num_frames=4, num_inference_steps=2, output_type="np")
# Inductor reorders fp32 reductions and fuses epilogues (and prepacks the weights for oneDNN),
# so compiled and eager differ by accumulation order only: ~3e-5 measured on [0, 1] pixels.
TOLERANCE = 2e-4


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    import os

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    p = SVDPipeline.from_config("tiny", torch_dtype=torch.float32)
    for module in (p.unet, p.vae):
        randomize_(module, std=0.05)
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, seed):
    return pipe(_image(seed), generator=torch.Generator().manual_seed(seed), **KWARGS).frames


def test_compiled_pipeline_matches_eager_without_breaks_or_recompiles(pipe):
    expected = [_run(pipe, seed) for seed in (0, 1)]
    torch._dynamo.reset()
    counters.clear()
    accel.accelerate(pipe, compile=True)
    assert isinstance(pipe.unet, CompiledModule) and pipe.vae.compiled_decoder is not None
    got = [_run(pipe, seed) for seed in (0, 1)]  # the second image must reuse the graphs
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=TOLERANCE)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # one UNet graph, one decoder graph: nothing recompiled
    assert accel.compile_seconds(pipe) > 0

    # memory must not grow across calls (allocator caches warm up in the first calls)
    _run(pipe, 2)
    before = _rss_bytes()
    for seed in range(3, 6):
        _run(pipe, seed)
    assert _rss_bytes() - before < 32 * 2**20
    assert counters["stats"]["unique_graphs"] == 2

    accel.restore(pipe)
    assert isinstance(pipe.unet, VideoUNet) and pipe.vae.compiled_decoder is None
    np.testing.assert_array_equal(_run(pipe, 0), expected[0])  # eager again, bit for bit


def test_a_compiled_pipeline_saves_the_same_checkpoint(pipe, tmp_path):
    accel.accelerate(pipe, compile=True)
    try:
        pipe.save_pretrained(tmp_path / "m")
    finally:
        accel.restore(pipe)
    loaded = SVDPipeline.from_pretrained(tmp_path / "m")
    for key, value in pipe.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[key], value, rtol=0, atol=0)


def test_accelerate_rejects_other_objects():
    with pytest.raises(TypeError, match="SVDPipeline or a diffusers StableVideoDiffusionPipeline"):
        accel.accelerate(object())
