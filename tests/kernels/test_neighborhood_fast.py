"""The fast PyTorch neighborhood-attention path (``kernels/neighborhood/fast.py``) against the gather
reference: the no-grad SDPA path, the training path (forward and all gradients), tile choice, the halo
geometry (query padding, groups of different lengths), and the no-grad mask cache."""

from __future__ import annotations

import pytest
import torch
from _tolerances import assert_close

from mixerzoo.kernels.neighborhood import fast, reference


def _inputs(shape, *, kernel, dtype=torch.float64, seed=0, use_rpb=True, grad=False):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad) for _ in range(3))
    rpb = None
    if use_rpb:
        kh, kw = kernel
        rpb = torch.randn((shape[3], 2 * kh - 1, 2 * kw - 1), generator=gen, dtype=torch.float64)
        rpb = rpb.to(dtype).requires_grad_(grad)
    return q, k, v, rpb


# (B, H, W, heads, D), kernel, dilation, rpb, tile
CASES = [
    ((2, 7, 7, 2, 8), (7, 7), (1, 1), True, None),  # window == map: one dense tile with bias
    ((2, 14, 14, 2, 8), (7, 7), (1, 1), True, None),  # one tile of 14 (halo = map, no padding)
    ((1, 24, 16, 2, 8), (7, 7), (1, 1), True, None),  # 24: tiles of 8 (3 tiles, padded halo)
    ((1, 30, 29, 1, 4), (7, 7), (1, 1), True, None),  # odd sizes: tiles 10 / 8 (padded queries on W)
    ((1, 23, 19, 2, 4), (3, 5), (3, 2), True, None),  # dilation groups of different lengths (grouped mask)
    ((1, 32, 24, 2, 4), (5, 5), (4, 2), False, None),  # dilation folded into the batch, no rpb
    ((1, 28, 28, 2, 4), (7, 7), (4, 4), True, None),  # DiNAT stage 2 geometry (groups of 7)
    ((1, 31, 30, 2, 4), (7, 7), (2, 3), True, (8, 4)),  # tile overrides, rounded up to a valid tile
    ((2, 20, 17, 2, 4), (5, 7), (1, 1), False, (3, 5)),
]


@pytest.mark.parametrize("shape,ks,dil,use_rpb,tile", CASES)
def test_no_grad_path_matches_reference(shape, ks, dil, use_rpb, tile):
    q, k, v, rpb = _inputs(shape, kernel=ks, use_rpb=use_rpb)
    with torch.no_grad():
        out = fast.forward(q, k, v, ks, dil, rpb, 0.6, tile=tile)
    assert_close(out, reference.forward(q, k, v, ks, dil, rpb, 0.6), torch.float64, what="out")


@pytest.mark.parametrize("shape,ks,dil,use_rpb,tile", CASES[2:6])
def test_training_path_matches_reference(shape, ks, dil, use_rpb, tile, monkeypatch):
    monkeypatch.setattr(fast, "_CHUNK_ELEMS", 3000)  # several backward chunks, split both ways
    q, k, v, rpb = _inputs(shape, kernel=ks, use_rpb=use_rpb, grad=True)
    inputs = [x for x in (q, k, v, rpb) if x is not None]
    out = fast.forward(q, k, v, ks, dil, rpb, 0.6, tile=tile)
    ref = reference.forward(q, k, v, ks, dil, rpb, 0.6)
    grad_out = torch.randn_like(ref)
    assert_close(out, ref, torch.float64, what="out")
    got, want = torch.autograd.grad(out, inputs, grad_out), torch.autograd.grad(ref, inputs, grad_out)
    for name, g, w in zip("qkvb", got, want):
        assert_close(g, w, torch.float64, grad=True, what=f"d{name}")


def test_training_path_without_cpu_flash_kernel(monkeypatch):
    """Devices without the CPU flash kernel use the chunked matmul forward (same results)."""
    monkeypatch.setattr(fast, "_HAS_CPU_FLASH", False)
    monkeypatch.setattr(fast, "_CHUNK_ELEMS", 2000)
    ks = (5, 5)
    q, k, v, rpb = _inputs((1, 13, 12, 2, 4), kernel=ks, grad=True)
    out = fast.forward(q, k, v, ks, (2, 1), rpb, 0.5)
    ref = reference.forward(q, k, v, ks, (2, 1), rpb, 0.5)
    assert_close(out, ref, torch.float64, what="out")
    g, w = torch.autograd.grad(out.sum(), rpb), torch.autograd.grad(ref.sum(), rpb)
    assert_close(g[0], w[0], torch.float64, grad=True, what="drpb")


def test_fp32_model_shapes_no_grad():
    """nat_mini's stage-1 and DiNAT's dilated stage-1 geometry in fp32 (the inference path users run)."""
    for dil in ((1, 1), (8, 8)):
        q, k, v, rpb = _inputs((1, 56, 56, 2, 32), kernel=(7, 7), dtype=torch.float32)
        with torch.no_grad():
            out = fast.forward(q, k, v, (7, 7), dil, rpb, 32**-0.5)
        assert_close(out, reference.forward(q, k, v, (7, 7), dil, rpb, 32**-0.5), torch.float32, what=f"out d={dil}")


def test_bf16_no_grad_computes_in_fp32():
    q, k, v, rpb = _inputs((1, 11, 9, 2, 16), kernel=(5, 5), dtype=torch.bfloat16)
    with torch.no_grad():
        out = fast.forward(q, k, v, (5, 5), (1, 1), rpb.float(), 0.25)
    assert out.dtype == torch.bfloat16
    ref = reference.forward(*(x.double() for x in (q, k, v)), (5, 5), (1, 1), rpb.double(), 0.25)
    assert_close(out.float(), ref, torch.bfloat16, what="out")


def test_mask_cache_reused_and_invalidated_by_inplace_rpb_change():
    ks = (5, 5)
    q, k, v, _ = _inputs((1, 12, 12, 2, 4), kernel=ks, dtype=torch.float32)
    rpb = torch.nn.Parameter(torch.randn(2, 9, 9))
    with torch.no_grad():
        out1 = fast.forward(q, k, v, ks, (1, 1), rpb, 0.5)
        cached = fast._MASKS[id(rpb)][2]
        out2 = fast.forward(q, k, v, ks, (1, 1), rpb, 0.5)
        assert fast._MASKS[id(rpb)][2] is cached  # unchanged rpb: the mask is reused
        torch.testing.assert_close(out1, out2, rtol=0, atol=0)
        rpb.mul_(3.0)  # in place (optimizer step / load_state_dict): version counter moves
        out3 = fast.forward(q, k, v, ks, (1, 1), rpb, 0.5)
        assert fast._MASKS[id(rpb)][2] is not cached
    assert_close(out3, reference.forward(q, k, v, ks, (1, 1), rpb.detach(), 0.5), torch.float32, what="after mul_")
    assert (out3 - out1).abs().max() > 1e-3


def test_grad_mode_never_uses_the_cache():
    ks = (3, 3)
    q, k, v, rpb = _inputs((1, 8, 8, 1, 4), kernel=ks, dtype=torch.float32, grad=True)
    fast._MASKS.pop(id(rpb), None)
    fast.forward(q, k, v, ks, (1, 1), rpb, 0.5).sum().backward()
    assert id(rpb) not in fast._MASKS and rpb.grad is not None


@pytest.mark.parametrize("kernel", [3, 5, 7, 11])
def test_choose_tile_gives_valid_halos(kernel):
    """Every chosen tile lets each halo hold its queries' windows (first/last tile with > K//2 queries)."""
    for dilation in (1, 2, 3, 8):
        for length in range(kernel * dilation, kernel * dilation + 40):
            lengths = fast._group_lengths(length, dilation)
            tile = fast.choose_tile(length, kernel, dilation)
            assert fast._tile_ok(tile, lengths, kernel), (length, kernel, dilation, tile)
    assert fast.choose_tile(56, 7) == 8 and fast.choose_tile(28, 7) == 7 and fast.choose_tile(14, 7) == 14


def test_small_tile_sweep_no_grad():
    """Every requested tile edge (rounded up to a valid one) gives the reference result on a 1-D-ish strip."""
    ks = (1, 5)
    q, k, v, rpb = _inputs((1, 1, 23, 1, 4), kernel=ks)
    want = reference.forward(q, k, v, ks, (1, 1), rpb, 1.0)
    with torch.no_grad():
        for t in range(1, 24):
            out = fast.forward(q, k, v, ks, (1, 1), rpb, 1.0, tile=(1, t))
            assert_close(out, want, torch.float64, what=f"tile {t}")
