"""HiLo mixer: the official maths (re-derived here in plain PyTorch), head split, padding masks, layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.plugins import create_mixer, mixer_spec


def _reference(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Architectures.md §2.3 written out: explicit windows, pooled input, Hi-Fi first, H, W multiples of s."""
    B, H, W, C = x.shape
    s, d = m.ws, m.head_dim
    outs = []
    if m.h_heads:
        nh = m.h_heads
        xw = x.view(B, H // s, s, W // s, s, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, s * s, C)
        q, k, v = m.h_qkv(xw).view(B, xw.shape[1], s * s, 3, nh, d).permute(3, 0, 1, 4, 2, 5)
        a = (q @ k.transpose(-1, -2) * m.scale).softmax(-1) @ v  # B, nW, nh, s², d
        a = a.permute(0, 1, 3, 2, 4).reshape(B, H // s, W // s, s, s, nh * d).permute(0, 1, 3, 2, 4, 5)
        outs.append(m.h_proj(a.reshape(B, H, W, nh * d)))
    if m.l_heads:
        nl = m.l_heads
        q = m.l_q(x).view(B, H * W, nl, d).transpose(1, 2)
        p = F.avg_pool2d(x.permute(0, 3, 1, 2), s, s).flatten(2).transpose(1, 2) if s > 1 else x.reshape(B, -1, C)
        k, v = m.l_kv(p).view(B, -1, 2, nl, d).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-1, -2) * m.scale).softmax(-1) @ v
        outs.append(m.l_proj(a.transpose(1, 2).reshape(B, H, W, nl * d)))
    return torch.cat(outs, -1)


@pytest.mark.parametrize(("heads", "ws", "alpha", "lo", "hi"), [(12, 2, 0.9, 10, 2), (8, 1, 0.9, 8, 0), (4, 2, 0.0, 0, 4), (4, 2, 1.0, 4, 0)])
def test_matches_reference_and_head_split(heads: int, ws: int, alpha: float, lo: int, hi: int) -> None:
    torch.manual_seed(0)
    m = create_mixer("hilo", 8 * heads, num_heads=heads, window_size=ws, alpha=alpha).eval()
    assert (m.l_heads, m.h_heads) == (lo, hi)
    x = torch.randn(2, 6, 4, 8 * heads)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _reference(m, x), atol=1e-5, rtol=1e-5)


def test_official_keys_and_shapes() -> None:
    m = create_mixer("hilo", 384, num_heads=12, window_size=2, alpha=0.9)  # LITv2-S stage 3 (official litv2.py)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "l_q.weight": (320, 384), "l_q.bias": (320,), "l_kv.weight": (640, 384), "l_kv.bias": (640,),
        "l_proj.weight": (320, 320), "l_proj.bias": (320,), "h_qkv.weight": (192, 384), "h_qkv.bias": (192,),
        "h_proj.weight": (64, 64), "h_proj.bias": (64,),
    }  # fmt: skip
    assert mixer_spec("hilo").layout == "nhwc"


def test_odd_sizes_mask_padding() -> None:
    """On a 5×7 map the Lo-Fi pooled keys average only real tokens and Hi-Fi windows ignore padding: the
    result equals the reference run on the real tokens of each (partial) window / pooling cell."""
    torch.manual_seed(0)
    m = create_mixer("hilo", 32, num_heads=4, window_size=2, alpha=0.0).eval()  # Hi-Fi only
    x = torch.randn(1, 5, 7, 32)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y[:, :4, :6], m(x[:, :4, :6].contiguous()), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(y[:, 4:, :2], m(x[:, 4:, :2].contiguous()), atol=1e-6, rtol=1e-6)
    lo = create_mixer("hilo", 32, num_heads=4, window_size=2, alpha=1.0).eval()  # Lo-Fi only
    with torch.no_grad():
        z = lo(x)
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True)  # real-token averages
        assert pooled[0, :, 2, 3].allclose(x[0, 4, 6])  # the corner cell holds one real token
    assert z.shape == x.shape and z.isfinite().all()


def test_backward_and_bad_args() -> None:
    m = create_mixer("hilo", 64, num_heads=4)
    m(torch.randn(2, 3, 5, 64)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError, match="alpha"):
        create_mixer("hilo", 64, num_heads=4, alpha=1.5)
    with pytest.raises(ValueError, match="num_heads"):
        create_mixer("hilo", 64, num_heads=5)
    with pytest.raises(TypeError):
        create_mixer("hilo", 64, bogus=1)
