"""window_attention_2d: reference vs an independent definition (dense attention with a mask built
from the window / Swin-shift rules, float64), the GNA stride=window equivalence, fast path vs
reference (forward and all gradients), validation."""

from __future__ import annotations

import math

import pytest
import torch
from _tolerances import assert_close

from mixerzoo.kernels import KernelNotSupportedError, window_attention_2d, window_attention_2d_qkv


def _gna_window(length: int, kernel: int, stride: int) -> list[range]:
    """NATTEN's generalized-NA rule per axis (stride groups share their leader's clamped window)."""
    out = []
    for i in range(length):
        g0 = (i // stride) * stride
        leader = min(g0 + stride // 2, length - 1)
        start = min(max(leader - kernel // 2, 0), length - kernel)
        out.append(range(start, start + kernel))
    return out


def _swin_region(i: int, length: int, window: int, shift: int) -> int:
    """Swin's label (0/1/2) of position i of the rolled axis."""
    if shift == 0:
        return 0
    return 0 if i < length - window else (1 if i < length - shift else 2)


def definition(q, k, v, window, shift=(0, 0), rpb=None, scale=None):
    """Dense float64 attention over all tokens with an explicit (H*W)^2 mask:
    same window (GNA with stride = kernel = window on the rolled map) and, when shifted, same Swin region;
    bias rpb[qy - ky + wh - 1, qx - kx + ww - 1] in rolled window coordinates."""
    b, height, width, heads, dim = q.shape
    (wh, ww), (sh, sw) = window, shift
    scale = dim**-0.5 if scale is None else scale
    wy, wx = _gna_window(height, wh, wh), _gna_window(width, ww, ww)
    n = height * width
    rows, cols, bys, bxs = [], [], [], []  # every visible (query, key) pair, listed explicitly
    for qy in range(height):
        for qx in range(width):
            for ky in wy[qy]:
                for kx in wx[qx]:
                    if _swin_region(qy, height, wh, sh) != _swin_region(ky, height, wh, sh):
                        continue
                    if _swin_region(qx, width, ww, sw) != _swin_region(kx, width, ww, sw):
                        continue
                    rows.append(qy * width + qx)
                    cols.append(ky * width + kx)
                    bys.append(qy - ky + wh - 1)
                    bxs.append(qx - kx + ww - 1)
    bias = torch.full((heads, n, n), float("-inf"), dtype=torch.float64)
    bias[:, rows, cols] = 0.0 if rpb is None else rpb.double()[:, bys, bxs]
    rolled = [torch.roll(x.double(), (-sh, -sw), (1, 2)).reshape(b, n, heads, dim).transpose(1, 2) for x in (q, k, v)]
    qf, kf, vf = rolled
    out = ((qf @ kf.transpose(-1, -2) * scale + bias).softmax(-1) @ vf).transpose(1, 2).reshape(q.shape)
    return torch.roll(out, (sh, sw), (1, 2))


def _inputs(shape, window, *, dtype=torch.float64, rpb=False, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad) for _ in range(3))
    bias = None
    if rpb:
        bias = torch.randn((shape[3], 2 * window[0] - 1, 2 * window[1] - 1), generator=gen, dtype=torch.float64)
        bias = bias.to(dtype).requires_grad_(grad)
    return q, k, v, bias


CASES = [
    # shape, window, shift, rpb
    ((2, 8, 8, 2, 4), (4, 4), (0, 0), False),
    ((1, 8, 12, 2, 4), (4, 3), (0, 0), True),
    ((1, 8, 12, 1, 4), (4, 4), (2, 2), True),  # Swin SW-MSA
    ((2, 6, 9, 2, 3), (3, 3), (1, 2), False),
    ((1, 4, 4, 1, 4), (4, 4), (0, 0), True),  # one window == dense attention
]


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("shape,window,shift,use_rpb", CASES)
def test_matches_definition(impl, shape, window, shift, use_rpb):
    q, k, v, rpb = _inputs(shape, window, rpb=use_rpb)
    out = window_attention_2d(q, k, v, window, shift=shift, rpb=rpb, impl=impl)
    torch.testing.assert_close(out, definition(q, k, v, window, shift, rpb), rtol=0, atol=1e-12)


def test_stride_window_gna_matches_blocks():
    """The GNA rule with stride == kernel == window gives exactly the non-overlapping blocks."""
    for length, w in ((8, 4), (9, 3), (12, 6)):
        assert _gna_window(length, w, w) == [range((i // w) * w, (i // w) * w + w) for i in range(length)]


def test_swin_regions_match_swin_mask_construction():
    """Our region labels reproduce Swin's img_mask slicing (h_slices/w_slices with -window, -shift)."""
    from mixerzoo.kernels.window.common import region_labels

    height, width, ws, s = 8, 12, 4, 2
    img = torch.zeros(height, width, dtype=torch.long)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[hs, wsl] = cnt
            cnt += 1
    assert torch.equal(region_labels(height, width, (ws, ws), (s, s)), img)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shift,use_rpb", [((0, 0), False), ((2, 1), True)])
def test_fast_matches_reference_grads(dtype, shift, use_rpb):
    window = (4, 4)
    q, k, v, rpb = _inputs((2, 8, 12, 2, 8), window, dtype=dtype, rpb=use_rpb, grad=True)
    inputs = [x for x in (q, k, v, rpb) if x is not None]
    out = window_attention_2d(q, k, v, window, shift=shift, rpb=rpb, impl="torch")
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    ref = window_attention_2d(*ref_in[:3], window, shift=shift, rpb=ref_in[3] if use_rpb else None, impl="reference")
    assert out.dtype == dtype
    grad_out = torch.randn_like(ref)
    assert_close(out.double(), ref, dtype, what="out")
    got = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    want = torch.autograd.grad(ref, ref_in, grad_out)
    for name, g, w in zip(("dq", "dk", "dv", "drpb"), got, want):
        assert_close(g.double(), w, dtype, grad=True, what=name)


def test_gradcheck():
    q, k, v, rpb = _inputs((1, 4, 4, 1, 2), (2, 2), rpb=True, grad=True)
    fn = lambda q, k, v, rpb: window_attention_2d(q, k, v, (2, 2), shift=(1, 1), rpb=rpb, impl="reference")
    assert torch.autograd.gradcheck(fn, (q, k, v, rpb), fast_mode=True)


def test_meta_device():
    q = torch.empty((2, 16, 16, 4, 32), device="meta")
    assert window_attention_2d(q, q, q, 8, shift=4).shape == q.shape


@pytest.mark.parametrize(
    "shape,window,shift,exc,match",
    [
        ((1, 10, 8, 1, 4), 4, 0, ValueError, r"H = 10 is not a multiple of window_size 4"),
        ((1, 8, 6, 1, 4), 4, 0, ValueError, r"W = 6 is not a multiple"),
        ((1, 8, 8, 1, 4), 4, 4, ValueError, r"shift must satisfy .*shift=4"),
        ((1, 8, 8, 1, 4), 4, (1, 2, 3), TypeError, r"shift must be an int or a pair.*\(1, 2, 3\)"),
        ((1, 8, 8, 1, 4), 0, 0, ValueError, "window_size must be >= 1"),
    ],
)
def test_validation(shape, window, shift, exc, match):
    q = torch.randn(shape)
    with pytest.raises(exc, match=match):
        window_attention_2d(q, q, q, window, shift=shift)


def test_explicit_triton_raises():
    q = torch.randn(1, 4, 4, 1, 4)
    with pytest.raises(KernelNotSupportedError, match="not available"):
        window_attention_2d(q, q, q, 2, impl="triton")


def test_hilo_window_shape():
    """HiLo Hi-Fi usage: window 2, no bias, no shift; output keeps the layout."""
    q, k, v, _ = _inputs((2, 14, 14, 3, 8), (2, 2), dtype=torch.float32)
    out = window_attention_2d(q, k, v, 2)
    assert out.shape == q.shape and math.isfinite(out.sum().item())


# ---- packed q|k|v (window_attention_2d_qkv) ------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("shape,window,shift,use_rpb", CASES)
def test_packed_matches_definition(impl, shape, window, shift, use_rpb):
    q, k, v, rpb = _inputs(shape, window, rpb=use_rpb)
    out = window_attention_2d_qkv(torch.stack((q, k, v), 3), window, shift=shift, rpb=rpb, impl=impl)
    torch.testing.assert_close(out, definition(q, k, v, window, shift, rpb), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shift,use_rpb", [((0, 0), False), ((2, 1), True), ((0, 3), True)])
def test_packed_grads_match_reference(dtype, shift, use_rpb):
    """The packed op's hand-written backward (fp32/fp64) and its unpacked fallback (bf16): output, the packed
    gradient and the bias gradient against the reference in float64."""
    window = (4, 4)
    q, k, v, rpb = _inputs((2, 8, 12, 3, 8), window, dtype=dtype, rpb=use_rpb, grad=False)
    qkv = torch.stack((q, k, v), 3).requires_grad_()
    inputs = [qkv] + ([rpb.requires_grad_()] if use_rpb else [])
    out = window_attention_2d_qkv(qkv, window, shift=shift, rpb=rpb, impl="torch")
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    ref_rpb = ref_in[1] if use_rpb else None
    ref = window_attention_2d(*ref_in[0].unbind(3), window, shift=shift, rpb=ref_rpb, impl="reference")
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out.double(), ref, dtype, what="out")
    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    want = torch.autograd.grad(ref, ref_in, grad_out)
    for name, g, w in zip(("dqkv", "drpb"), got, want):
        assert g.shape == w.shape
        assert_close(g.double(), w, dtype, grad=True, what=name)


def test_packed_gradcheck():
    q, k, v, rpb = _inputs((2, 4, 6, 2, 3), (2, 3), rpb=True)
    qkv = torch.stack((q, k, v), 3).requires_grad_()
    fn = lambda qkv, rpb: window_attention_2d_qkv(qkv, (2, 3), shift=(1, 1), rpb=rpb, impl="torch")
    assert torch.autograd.gradcheck(fn, (qkv, rpb.requires_grad_()))


@pytest.mark.parametrize("bad", [torch.randn(1, 4, 4, 2, 1, 4), torch.randn(1, 4, 4, 3, 4), "qkv"])
def test_packed_validation(bad):
    with pytest.raises(ValueError, match=r"qkv must be \(B, H, W, 3, heads, head_dim\)"):
        window_attention_2d_qkv(bad, 2)
