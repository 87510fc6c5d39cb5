"""VideoUNet against diffusers' UNetSpatioTemporalConditionModel with the same random weights."""
import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from svd_fast.config import SVDConfig, UNetConfig
from svd_fast.unet import VideoUNet, timestep_embedding
from tests.conftest import randomize_

# (name, diffusers kwargs, batch, frames, latent h, latent w)
CONFIGS = [
    (  # two levels, one head, odd frame count
        "2lvl", dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                     up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=(1, 2),
                     layers_per_block=1), 1, 3, 8, 8),
    (  # three levels, sizes not divisible by 4 (forced upsample sizes), batch 2
        "3lvl-odd", dict(block_out_channels=(32, 64, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
                         up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2, num_attention_heads=(2, 2, 4),
                         layers_per_block=2), 2, 5, 10, 6),
    (  # every level with attention, head dim 16, one frame
        "all-attn", dict(block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2,
                         up_block_types=("CrossAttnUpBlockSpatioTemporal",) * 2, num_attention_heads=(2, 2),
                         layers_per_block=1, transformer_layers_per_block=2), 2, 1, 4, 4),
]
COMMON = dict(cross_attention_dim=16, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, num_frames=5)


def _pair(kwargs, seed=0):
    ref = randomize_(UNetSpatioTemporalConditionModel(**kwargs, **COMMON).eval(), seed=seed)
    ours = VideoUNet(UNetConfig.from_diffusers(dict(ref.config), numerics="diffusers")).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("name,kwargs,b,t,h,w", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_forward_matches_diffusers_fp32(name, kwargs, b, t, h, w):
    ref, ours = _pair(kwargs)
    x = torch.randn(b, t, 8, h, w)
    c_noise = torch.linspace(-1.5, 1.6, b)
    context = torch.randn(b, 1, 16)
    ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(b, 1) + torch.arange(b)[:, None]
    with torch.no_grad():
        expected = ref(x, c_noise, context, ids).sample
        got = ours(x, c_noise, context, ids)
    assert got.shape == expected.shape
    rel = (got - expected).norm() / expected.norm()
    assert rel < 1e-5, f"relative error {rel:.2e}"


def test_image_only_frames_drop_the_temporal_path():
    """alpha = 1 on image-only frames: each frame then equals a 1-frame clip run on its own."""
    _, ours = _pair(CONFIGS[0][1])
    x, context, ids = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 1, 16), torch.tensor([[6.0, 127.0, 0.02]])
    with torch.no_grad():
        together = ours(x, torch.tensor([0.3]), context, ids, image_only_indicator=torch.ones(1, 3))
        alone = [ours(x[:, i : i + 1], torch.tensor([0.3]), context, ids, torch.ones(1, 1)) for i in range(3)]
    # A 1-frame clip still pools temporal GroupNorm over one frame, but alpha = 1 discards that path.
    torch.testing.assert_close(together, torch.cat(alone, dim=1), rtol=1e-5, atol=1e-5)


def test_multi_token_context_uses_full_attention():
    """With 2 context tokens (frame interpolation) cross-attention is real attention; compare to diffusers."""
    ref, ours = _pair(CONFIGS[0][1])
    x, context, ids = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 2, 16), torch.tensor([[6.0, 127.0, 0.02]])
    with torch.no_grad():
        expected = ref(x, torch.tensor([0.3]), context, ids).sample
        got = ours(x, torch.tensor([0.3]), context, ids)
    assert (got - expected).norm() / expected.norm() < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp32(dtype):
    """bf16/fp16 run end to end; their error against fp32 stays within 2x diffusers' own error."""
    ref, ours = _pair(CONFIGS[0][1])
    x, c, ids = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 1, 16), torch.tensor([[6.0, 127.0, 0.02]])
    with torch.no_grad():
        exact = ours(x, torch.tensor([0.3]), c, ids)
        ours_lp = ours.to(dtype)(x.to(dtype), torch.tensor([0.3]), c.to(dtype), ids.to(dtype)).float()
        ref_lp = ref.to(dtype)(x.to(dtype), torch.tensor([0.3]), c.to(dtype), ids.to(dtype)).sample.float()
    ours_err = (ours_lp - exact).norm() / exact.norm()
    ref_err = (ref_lp - exact).norm() / exact.norm()
    assert torch.isfinite(ours_lp).all()
    assert ours_err <= 2 * ref_err + 1e-3, f"{dtype}: ours {ours_err:.3e} vs diffusers {ref_err:.3e}"


def test_sgm_numerics_use_1e5_everywhere():
    cfg = UNetConfig(numerics="sgm")
    assert {cfg.resnet_eps(w, lvl) for w in ("down", "mid", "up") for lvl in range(4)} == {1e-5}
    d = UNetConfig(numerics="diffusers")
    assert d.resnet_eps("down", 0) == 1e-6 and d.resnet_eps("down", 3) == 1e-5
    assert d.resnet_eps("mid") == 1e-5 and d.resnet_eps("up", 2) == 1e-6
    built = VideoUNet(SVDConfig.from_name("tiny").unet)
    assert built.down_blocks[0].resnets[0].spatial_res_block.norm1.eps == 1e-5


def _with_sgm_epsilons(ref: UNetSpatioTemporalConditionModel) -> UNetSpatioTemporalConditionModel:
    """diffusers' UNet with the released sgm code's GroupNorm epsilons (svd_facts 1.7), written
    here from the facts, not from svd_fast: every ResBlock norm, spatial and temporal, and
    conv_norm_out at 1e-5; the spatiotemporal transformers' input norm at 1e-6."""
    for name, module in ref.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            in_resblock = ".resnets." in name and ("spatial_res_block" in name or "temporal_res_block" in name)
            if in_resblock or name == "conv_norm_out":
                module.eps = 1e-5
            elif ".attentions." in name and name.endswith(".norm"):
                module.eps = 1e-6
            else:
                raise AssertionError(f"a GroupNorm the facts do not cover: {name}")
    return ref


def test_sgm_numerics_match_an_independent_sgm_reference():
    """numerics="sgm" (the default) against diffusers' blocks with sgm's epsilons. The input is
    scaled down so the first norms see variances near the epsilons: the comparison then tells
    the two epsilon layouts apart (checked against diffusers' own)."""
    kwargs = CONFIGS[1][1]
    ref = randomize_(UNetSpatioTemporalConditionModel(**kwargs, **COMMON).eval(), seed=3)
    ours = VideoUNet(UNetConfig.from_diffusers(dict(ref.config), numerics="sgm")).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    x = 1e-3 * torch.randn(2, 5, 8, 10, 6, generator=g)
    c_noise, context = torch.tensor([-1.0, 0.7]), torch.randn(2, 1, 16, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02], [4.0, 30.0, 0.1]])
    with torch.no_grad():
        diffusers_eps = ref(x, c_noise, context, ids).sample
        sgm_eps = _with_sgm_epsilons(ref)(x, c_noise, context, ids).sample
        got = ours(x, c_noise, context, ids)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    assert rel(diffusers_eps, sgm_eps) > 1e-3  # the epsilons matter for this input
    assert rel(got, sgm_eps) < 1e-5, f"relative error {rel(got, sgm_eps):.2e}"


@pytest.mark.parametrize("preset", ["svd", "svd_xt"])
def test_full_size_matches_diffusers_on_meta(preset):
    """Every parameter name and shape of the full-size model equals diffusers' default UNet."""
    with torch.device("meta"):
        ours = VideoUNet(SVDConfig.from_name(preset).unet)
        ref = UNetSpatioTemporalConditionModel()
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_shapes == ref_shapes
    assert sum(p.numel() for p in ours.parameters()) == 1_524_623_082
    assert len(ours_shapes) == 1428
    assert not list(ours.buffers())  # nothing left on meta after an assign-load


def test_timestep_embedding_matches_closed_form():
    t = torch.tensor([0.0, 1.0, -2.5])
    emb = timestep_embedding(t, 6)
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)])
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected)
    assert timestep_embedding(t, 7)[:, -1].abs().max() == 0  # odd widths are zero-padded


def test_bad_input_shapes_raise():
    _, ours = _pair(CONFIGS[0][1])
    with pytest.raises(ValueError, match="input channels"):
        ours(torch.randn(1, 3, 4, 8, 8), 0.1, torch.randn(1, 1, 16), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="batch mismatch"):
        ours(torch.randn(2, 3, 8, 8, 8), 0.1, torch.randn(1, 1, 16), torch.zeros(2, 3))


def test_inference_mode_equals_no_grad_and_leaves_inputs_untouched():
    _, ours = _pair(CONFIGS[1][1])
    x, context, ids = torch.randn(2, 5, 8, 10, 6), torch.randn(2, 1, 16), torch.tensor([[6.0, 127.0, 0.02]] * 2)
    kept = x.clone()
    with torch.no_grad():
        expected = ours(x, torch.tensor([0.3, 0.1]), context, ids)
    with torch.inference_mode():
        got = ours(x, torch.tensor([0.3, 0.1]), context, ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, kept)


def test_gradients_match_diffusers():
    """Training path: in-place adds into fresh outputs must keep autograd exact."""
    ref, ours = _pair(CONFIGS[0][1])
    x, context, ids = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 1, 16), torch.tensor([[6.0, 127.0, 0.02]])
    ref(x, torch.tensor([0.3]), context, ids).sample.square().mean().backward()
    ours(x, torch.tensor([0.3]), context, ids).square().mean().backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        expected = ref_grads[name].grad
        if name.endswith(("attn2.to_q.weight", "attn2.to_k.weight")) or ".norm2." in name and "transformer" in name:
            # single-token cross-attention: Q/K and the norm before them cannot affect the output
            assert p.grad is None and expected.abs().max() < 1e-6, name
            continue
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("with_residual", [False, True])
def test_feed_forward_in_token_chunks_equals_the_whole(monkeypatch, with_residual):
    """On a CPU, inference runs the GEGLU feed-forward in token chunks (unet.FF_CHUNK_BYTES): the same
    function as one pass over all tokens (independent rows), in the input's shape; autograd runs it whole."""
    import svd_fast.unet as unet_module

    ff = randomize_(unet_module.FeedForward(24, mult=2), std=0.3)
    x = torch.randn(3, 37, 24)  # 111 token rows: chunks of 16 rows leave a short last one
    residual = torch.randn(3, 37, 24) if with_residual else None
    with torch.no_grad():
        whole = ff(x, residual)
        monkeypatch.setattr(unet_module, "FF_CHUNK_BYTES", 16 * 96 * 4)  # 16 rows of the 96-wide projection
        calls = []
        ff.net[0].proj.register_forward_hook(lambda m, inp, out: calls.append(inp[0].numel() // 24))
        chunked = ff(x, residual)
    assert len(calls) > 1 and sum(calls) == 111 and max(calls) <= 16
    assert chunked.shape == whole.shape == (3, 37, 24)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    expected = ff._forward(x.reshape(111, 24), None if residual is None else residual.reshape(111, 24)).reshape(3, 37, 24)
    torch.testing.assert_close(whole, expected.detach(), atol=1e-5, rtol=1e-5)
    calls.clear()
    out = ff(x.requires_grad_(), residual)  # autograd: one pass (training keeps its graph whole)
    assert calls == [111] and out.requires_grad
