"""The reference ops are the ground truth: check them against direct formulas and gradcheck them in fp64."""
import math

import pytest
import torch
import torch.nn.functional as F

from svd_fast.kernels import reference

f64 = dict(dtype=torch.float64)


def test_group_norm_per_clip_pools_all_frames():
    """Per-clip statistics: mean/var over (T frames x group channels x positions) of each clip."""
    b, t, c, g = 2, 3, 6, 2
    x = torch.randn(b * t, c, 2, 5, **f64)
    w, bias = torch.randn(c, **f64), torch.randn(c, **f64)
    groups = x.reshape(b, t, g, c // g, 10)
    mean = groups.mean(dim=(1, 3, 4), keepdim=True)
    var = groups.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
    normed = ((groups - mean) / torch.sqrt(var + 1e-5)).reshape(b * t, c, 2, 5)
    expected = F.silu(normed * w[:, None, None] + bias[:, None, None])
    torch.testing.assert_close(reference.group_norm(x, g, w, bias, 1e-5, True, t), expected)


def test_group_norm_keeps_float64():
    """fp64 inputs are normalised in fp64 (only 16-bit inputs are upcast), so gradcheck is meaningful."""
    x = 1e4 + torch.randn(2, 4, 3, **f64) * 1e-3  # fp32 statistics would lose this variance
    y = reference.group_norm(x, 2, None, None, 0.0)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.reshape(2, 2, -1).std(-1, unbiased=False), torch.ones(2, 2, **f64), rtol=1e-6, atol=0)


def test_temporal_attention_is_attention_over_frames():
    """Output at (clip, frame i, position s, head h) = softmax_j(q_i . k_j / sqrt(d)) v_j over the clip's frames."""
    t, s, heads, d = 4, 3, 2, 5
    q, k, v = (torch.randn(2 * t, s, heads * d, **f64) for _ in range(3))
    out = reference.temporal_attention(q, k, v, t, heads)
    for clip in range(2):
        frames = slice(clip * t, (clip + 1) * t)
        for pos in range(s):
            for h in range(heads):
                cols = slice(h * d, (h + 1) * d)
                qi, kj, vj = q[frames, pos, cols], k[frames, pos, cols], v[frames, pos, cols]
                expected = torch.softmax(qi @ kj.T / math.sqrt(d), dim=-1) @ vj
                torch.testing.assert_close(out[frames, pos, cols], expected)


def test_temporal_conv_sums_shifted_frames_with_zero_padding():
    """y[t] = bias + sum_k W_k x[t + k - 1] with frames outside the clip treated as zeros."""
    t, cin, cout = 4, 3, 2
    x = torch.randn(2 * t, cin, 2, 2, **f64)
    w, bias = torch.randn(cout, cin, 3, 1, 1, **f64), torch.randn(cout, **f64)
    out = reference.temporal_conv(x, w, bias, t)
    clips = x.reshape(2, t, cin, 2, 2)
    for clip in range(2):
        for frame in range(t):
            expected = bias[:, None, None].clone()
            for tap in range(3):
                src = frame + tap - 1
                if 0 <= src < t:
                    expected = expected + torch.einsum("oi,ihw->ohw", w[:, :, tap, 0, 0], clips[clip, src])
            torch.testing.assert_close(out[clip * t + frame], expected)


def test_blends_and_geglu_formulas():
    a, b = torch.randn(3, 4, 2, **f64), torch.randn(3, 4, 2, **f64)
    alpha = torch.rand(3, **f64)
    al = alpha[:, None, None]
    torch.testing.assert_close(reference.alpha_blend(a, b, alpha), al * a + (1 - al) * b)
    torch.testing.assert_close(reference.alpha_blend_residual(a, b, alpha), reference.alpha_blend(a, a + b, alpha))
    x = torch.randn(5, 6, **f64)
    gate = x[:, 3:]
    torch.testing.assert_close(reference.geglu(x), x[:, :3] * gate * 0.5 * (1 + torch.erf(gate / math.sqrt(2))))


def _leaf(*shape):
    return torch.randn(*shape, **f64, requires_grad=True)


GRADCHECKS = {
    "group_norm-clip-silu": lambda: (lambda x, w, b: reference.group_norm(x, 2, w, b, 1e-5, True, 3),
                                     (_leaf(6, 4, 2, 3), _leaf(4), _leaf(4))),
    "group_norm-frame": lambda: (lambda x, w, b: reference.group_norm(x, 2, w, b, 1e-5, False, None),
                                 (_leaf(2, 4, 3), _leaf(4), _leaf(4))),
    "temporal_attention": lambda: (lambda q, k, v: reference.temporal_attention(q, k, v, 3, 2),
                                   (_leaf(6, 2, 8), _leaf(6, 2, 8), _leaf(6, 2, 8))),
    "temporal_conv": lambda: (lambda x, w, b: reference.temporal_conv(x, w, b, 3),
                              (_leaf(6, 3, 2, 1), _leaf(2, 3, 3, 1, 1), _leaf(2))),
    "alpha_blend": lambda: (reference.alpha_blend, (_leaf(3, 4), _leaf(3, 4), torch.rand(3, **f64).requires_grad_())),
    "alpha_blend_residual": lambda: (reference.alpha_blend_residual,
                                     (_leaf(3, 4), _leaf(3, 4), torch.rand(3, **f64).requires_grad_())),
    "geglu": lambda: (reference.geglu, (_leaf(3, 6),)),
}


@pytest.mark.parametrize("case", list(GRADCHECKS))
def test_reference_gradients(case):
    fn, inputs = GRADCHECKS[case]()
    assert torch.autograd.gradcheck(fn, inputs)
