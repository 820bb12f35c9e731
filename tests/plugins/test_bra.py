"""The ``bra`` and ``attention_lepe`` mixers against independent references.

``reference_bra`` re-derives BiFormer's legacy BRA (rayleizhu/BiFormer ops/bra_legacy.py) with an explicit gather:
region partition, region means of q and k, routing logits scaled by the full qk dim, top-k, gathered
keys/values, softmax attention, LePE conv on the v map, output linear. It is written here from the
description, not from :mod:`mixerzoo.kernels`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.kernels import explain
from mixerzoo.plugins import create_mixer
from mixerzoo.plugins.bra import AttentionLePE, BiLevelRoutingAttention, _route


def reference_bra(m: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Official (unmasked) BRA; pads bottom/right to the region grid BEFORE qkv like ``auto_pad``."""
    N, H0, W0, C = x.shape
    S, Cq, heads = m.n_win, m.qk_dim, m.num_heads
    x = F.pad(x, (0, 0, 0, (-W0) % S, 0, (-H0) % S))
    H, W = x.shape[1:3]
    h, w = H // S, W // S
    xr = x.view(N, S, h, S, w, C).permute(0, 1, 3, 2, 4, 5).reshape(N, S * S, h * w, C)  # region-major
    q, k, v = m.qkv(xr).split([Cq, Cq, C], dim=-1)
    with torch.no_grad():
        logits = (q.mean(2) * m.scale) @ k.mean(2).transpose(-1, -2)
        idx = logits.topk(min(m.topk, S * S), dim=-1).indices  # [N, R, K]
    ar = torch.arange(N)[:, None, None]
    k_sel = k[ar, idx].flatten(2, 3)  # [N, R, K*T, Cq]
    v_sel = v[ar, idx].flatten(2, 3)
    qh = q.unflatten(-1, (heads, -1)).transpose(2, 3)  # [N, R, heads, T, d]
    kh = k_sel.unflatten(-1, (heads, -1)).transpose(2, 3)
    vh = v_sel.unflatten(-1, (heads, -1)).transpose(2, 3)
    out = ((qh * m.scale) @ kh.transpose(-1, -2)).softmax(-1) @ vh  # [N, R, heads, T, dv]
    out = out.transpose(2, 3).reshape(N, S, S, h, w, C).permute(0, 1, 3, 2, 4, 5).reshape(N, H, W, C)
    v_map = v.view(N, S, S, h, w, C).permute(0, 1, 3, 2, 4, 5).reshape(N, H, W, C)
    out = out + m.lepe(v_map.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return m.proj(out)[:, :H0, :W0]


def _bra(dim: int = 16, **kw) -> BiLevelRoutingAttention:
    torch.manual_seed(0)
    kw.setdefault("num_heads", 2)
    m = BiLevelRoutingAttention(dim, **kw).double()
    with torch.no_grad():
        m.qkv.bias.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("size,n_win,topk", [((8, 8), 2, 1), ((12, 9), 3, 4), ((14, 14), 7, 16), ((6, 10), 2, 4)])
def test_bra_matches_reference_forward_and_grads(size, n_win, topk) -> None:
    m = _bra(n_win=n_win, topk=topk)
    x = torch.randn(2, *size, 16, dtype=torch.float64, requires_grad=True)
    out = m(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    ref = reference_bra(m, x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    names = ["x", *(n for n, _ in m.named_parameters())]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):  # routing detached in both
        torch.testing.assert_close(g, rg, rtol=1e-8, atol=1e-10, msg=f"grad of {name}")


@pytest.mark.parametrize("size,n_win", [((11, 7), 2), ((5, 13), 3), ((3, 3), 7)])
def test_auto_pad_parity_reproduces_official_padding(size, n_win) -> None:
    m = _bra(n_win=n_win, topk=2, auto_pad_parity=True)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_bra(m, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("size,n_win", [((11, 7), 2), ((5, 13), 3), ((3, 4), 7)])
def test_masked_padding_with_all_regions_is_global_attention_on_real_tokens(size, n_win) -> None:
    """With every region routed, masked BRA must equal plain attention over the real tokens + LePE of v."""
    m = _bra(n_win=n_win, topk=n_win * n_win)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    N, H, W, C = x.shape
    q, k, v = m.qkv(x.reshape(N, H * W, C)).split([16, 16, 16], dim=-1)
    qh, kh, vh = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in (q, k, v))
    att = ((qh * m.scale) @ kh.transpose(-1, -2)).softmax(-1) @ vh
    out = att.transpose(1, 2).reshape(N, H, W, C)
    out = out + m.lepe(v.reshape(N, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(m(x), m.proj(out), rtol=1e-9, atol=1e-10)
    assert not torch.allclose(m(x), reference_bra(m, x))  # the official auto_pad differs here


def test_padding_only_regions_are_never_routed() -> None:
    q, k = torch.randn(1, 9, 4, 8), torch.randn(1, 9, 4, 8)
    pad = torch.zeros(1, 9, 4, dtype=torch.bool)
    pad[:, 6:] = True  # regions 6, 7, 8 are only padding
    pad[:, 3, 2:] = True  # region 3 is half padding: still routable
    idx = _route(q, k, pad, 8**-0.5, 6)
    assert idx.shape == (1, 9, 6)
    assert set(idx.flatten().tolist()) == set(range(6))
    assert not idx.requires_grad


def test_bra_calls_the_shared_kernel_op_and_meta() -> None:
    m = _bra(n_win=2, topk=2, impl="reference")
    m(torch.randn(1, 4, 4, 16, dtype=torch.float64))
    assert "ran 'reference'" in explain("routed_attention")
    meta = create_mixer("bra", 32, n_win=2, topk=2).to("meta")
    assert meta(torch.empty(2, 5, 6, 32, device="meta")).shape == (2, 5, 6, 32)


def test_bra_options_and_errors() -> None:
    m = create_mixer("bra", 64)
    assert isinstance(m, BiLevelRoutingAttention) and m.num_heads == 2 and m.scale == 64**-0.5
    assert m.qkv.weight.shape == (192, 64)
    assert create_mixer("bra", 64, qk_dim=32).qkv.weight.shape == (128, 64)
    assert create_mixer("bra", 64, side_dwconv=0).lepe is None
    with pytest.raises(TypeError):
        create_mixer("bra", 64, not_an_option=1)
    with pytest.raises(ValueError, match="topk=0"):
        create_mixer("bra", 64, topk=0)
    with pytest.raises(ValueError, match="n_win=0"):
        create_mixer("bra", 64, n_win=0)


def test_attention_lepe_matches_reference() -> None:
    torch.manual_seed(0)
    m = AttentionLePE(32).double()
    assert m.num_heads == 8 and m.qkv.bias is None
    x = torch.randn(2, 5, 3, 32, dtype=torch.float64)
    N, H, W, C = x.shape
    q, k, v = m.qkv(x.reshape(N, H * W, C)).reshape(N, H * W, 3, 8, 4).permute(2, 0, 3, 1, 4)
    att = (q @ k.transpose(-1, -2) * 4**-0.5).softmax(-1) @ v
    out = att.transpose(1, 2).reshape(N, H, W, C) + m.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # LePE on x
    torch.testing.assert_close(m(x), m.proj(out), rtol=1e-9, atol=1e-10)
    assert isinstance(create_mixer("attention_lepe", 64, num_heads=4), AttentionLePE)
