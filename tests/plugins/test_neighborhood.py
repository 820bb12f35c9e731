"""The ``neighborhood`` mixer against an independent reference of NATTEN's neighborhood attention.

The reference below is written from NATTEN's index rule (SHI-Labs/NATTEN) with python loops, not
from :mod:`mixerzoo.kernels`: per axis of length L, kernel K, dilation d, query i sits in group
``g = i % d`` at ``j = i // d``; its window starts at ``clamp(j - K//2, 0, ceil((L-g)/d) - K)`` and the
bias index of neighbour t is ``start + t - j + K - 1``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.kernels import explain
from mixerzoo.plugins import create_mixer
from mixerzoo.plugins.neighborhood import NeighborhoodAttention


def _axis(L: int, K: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    nbr = torch.empty(L, K, dtype=torch.long)
    bidx = torch.empty(L, K, dtype=torch.long)
    for i in range(L):
        g, j = i % d, i // d
        start = min(max(j - K // 2, 0), math.ceil((L - g) / d) - K)
        for t in range(K):
            nbr[i, t] = g + d * (start + t)
            bidx[i, t] = start + t - j + K - 1
    return nbr, bidx


def reference_na(m: NeighborhoodAttention, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """NATTEN 0.14 NeighborhoodAttention2D forward with the mixer's weights (``key_valid``: [H, W] bool)."""
    B, H, W, C = x.shape
    K, d, h = m.kernel_size, m.dilation, m.num_heads
    q, k, v = m.qkv(x).reshape(B, H, W, 3, h, C // h).permute(3, 0, 4, 1, 2, 5)  # [B, h, H, W, hd]
    ny, by = _axis(H, K, d)
    nx, bx = _axis(W, K, d)
    iy, ix = ny[:, None, :, None].expand(H, W, K, K), nx[None, :, None, :].expand(H, W, K, K)
    logits = torch.einsum("bnyxc,bnyxijc->bnyxij", q * m.scale, k[:, :, iy, ix])
    if m.rpb is not None:
        logits = logits + m.rpb[:, by[:, None, :, None], bx[None, :, None, :]][None]
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[iy, ix], float("-inf"))
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    out = torch.einsum("bnyxij,bnyxijc->bnyxc", attn, v[:, :, iy, ix])
    return m.proj(out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C))


def _mixer(dim: int = 16, heads: int = 2, **kw) -> NeighborhoodAttention:
    torch.manual_seed(0)
    m = NeighborhoodAttention(dim, num_heads=heads, **kw).double()
    with torch.no_grad():
        m.rpb.normal_(0, 0.5)
    return m


@pytest.mark.parametrize(
    "size,kernel,dilation",
    [((9, 11), 3, 1), ((13, 8), 5, 1), ((12, 17), 3, 3), ((15, 14), 3, 4), ((14, 14), 7, 2), ((7, 9), 7, 1)],
)
def test_matches_reference_forward_and_grads(size, kernel, dilation) -> None:
    m = _mixer(kernel_size=kernel, dilation=dilation)
    x = torch.randn(2, *size, 16, dtype=torch.float64, requires_grad=True)
    out = m(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    ref = reference_na(m, x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    for (name, _), g, rg in zip([("x", x), *m.named_parameters()], grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, rtol=1e-8, atol=1e-10, msg=f"grad of {name}")


def test_calls_the_shared_kernel_op() -> None:
    m = _mixer(kernel_size=3, impl="reference")
    x = torch.randn(1, 6, 6, 16, dtype=torch.float64)
    ref_impl = m(x)
    assert "ran 'reference'" in explain("neighborhood_attention_2d")
    m.impl = "torch"
    torch.testing.assert_close(m(x), ref_impl)
    assert "ran 'torch'" in explain("neighborhood_attention_2d")


def test_small_input_error_names_the_limit() -> None:
    m = _mixer(kernel_size=7, dilation=2)
    with pytest.raises(ValueError, match=r"kernel_size \* dilation = 14.*H=10, W=20"):
        m(torch.randn(1, 10, 20, 16, dtype=torch.float64))


def test_small_input_pad_mask_excludes_padding() -> None:
    m = _mixer(kernel_size=5, dilation=2, small_input="pad_mask")
    x = torch.randn(2, 6, 12, 16, dtype=torch.float64)  # limit 10: pad H to 10, W is fine
    out = m(x)
    valid = torch.zeros(10, 12, dtype=torch.bool)
    valid[:6] = True
    ref = reference_na(m, F.pad(x, (0, 0, 0, 0, 0, 4)), key_valid=valid)[:, :6]
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def test_small_input_pad_is_natten_014() -> None:
    m = _mixer(kernel_size=3, dilation=3, small_input="pad")
    x = torch.randn(1, 5, 11, 16, dtype=torch.float64)  # limit 9
    ref = reference_na(m, F.pad(x, (0, 0, 0, 0, 0, 4)))[:, :5]  # zero-padded tokens attended, unmasked
    torch.testing.assert_close(m(x), ref, rtol=1e-9, atol=1e-10)


def test_registry_meta_and_options() -> None:
    m = create_mixer("neighborhood", 64, num_heads=4, kernel_size=5)
    assert isinstance(m, NeighborhoodAttention) and m.rpb.shape == (4, 9, 9)
    assert m(torch.randn(1, 6, 7, 64)).shape == (1, 6, 7, 64)
    meta = create_mixer("neighborhood", 32, kernel_size=3).to("meta")
    assert meta(torch.empty(2, 5, 5, 32, device="meta")).shape == (2, 5, 5, 32)
    with pytest.raises(TypeError):
        create_mixer("neighborhood", 64, not_an_option=1)
    with pytest.raises(ValueError, match="kernel_size=4"):
        create_mixer("neighborhood", 64, kernel_size=4)
    with pytest.raises(ValueError, match="small_input='zero'"):
        create_mixer("neighborhood", 64, small_input="zero")
    assert create_mixer("neighborhood", 64, rel_pos_bias=False).rpb is None


def test_bf16_runs() -> None:
    m = create_mixer("neighborhood", 32, kernel_size=3, dilation=2).bfloat16()
    out = m(torch.randn(1, 8, 9, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
