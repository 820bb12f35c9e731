"""Chunked / recompute paths of the routed-attention ``torch`` impl (``mixerzoo/kernels/routed/fast.py``).

``fast._CHUNK_BYTES`` is shrunk so that every case runs several chunks of query regions; the autograd
Function (saves q, k, v, out, lse, routing; re-gathers K/V per chunk in backward), the no-grad chunked
forward and the no-grad dense shortcut are each compared with the gather reference.
Run: ``pytest tests/kernels/test_routed_fast.py``.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from mixerzoo.kernels.routed import fast, reference

sys.path.insert(0, os.path.dirname(__file__))
from _tolerances import assert_close  # noqa: E402


def make(B=2, R=8, T=5, H=2, D=8, K=3, G=1, mask=False, dtype=torch.float32, seed=0, distinct=True):  # noqa: ANN001, ANN201
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, R, T, H, D, generator=gen).to(dtype) for _ in range(3))
    if distinct:
        idx = torch.rand(B, G, R, R, generator=gen).topk(K, dim=-1).indices
    else:
        idx = torch.randint(0, R, (B, G, R, K), generator=gen)
    kpm = None
    if mask:
        kpm = torch.rand(B, R, T, generator=gen) < 0.3
        kpm[0, idx[0, 0, 1]] = True  # every key routed to (b=0, region 1) is padding -> zero output row
    return q, k, v, idx, kpm


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "_CHUNK_BYTES", 2048)  # a few query regions per chunk


def _run(fn, q, k, v, idx, kpm, grad):  # noqa: ANN001, ANN202
    xs = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*xs, idx, scale=0.4, key_padding_mask=kpm)
    out.backward(grad)
    return [out, *(x.grad for x in xs)]


@pytest.mark.parametrize(("G", "mask"), [(1, False), (1, True), (2, True)])
def test_chunked_recompute_backward_matches_reference(small_chunks: None, G: int, mask: bool) -> None:
    q, k, v, idx, kpm = make(G=G, mask=mask, seed=G)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    exp = _run(reference.forward, q.double(), k.double(), v.double(), idx, kpm, grad.double())
    got = _run(fast.forward, q, k, v, idx, kpm, grad)
    assert fast._chunk_rows(5, 3, 2 * 2 * 16, 4, 10**6) < q.shape[0] * q.shape[1]  # really several chunks
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, exp):
        assert_close(a, e.float(), torch.float32, grad=name != "out", what=f"chunked {name}")
    if mask:  # the all-padding query rows (b=0, region 1, head 0): zero output, zero gradient
        assert got[0][0, 1, :, 0].abs().max() == 0 and got[1][0, 1, :, 0].abs().max() == 0


def test_chunked_gradcheck_fp64(small_chunks: None) -> None:
    q, k, v, idx, kpm = make(B=1, R=4, T=3, H=2, D=4, K=2, mask=True, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: fast.forward(a, b, c, idx, scale=0.5, key_padding_mask=kpm), inputs, fast_mode=True
    )


def test_backward_saves_no_k_fold_copy() -> None:
    """What autograd keeps is O(q + k + v + out), not the K-times gathered K/V of the official formulation."""
    q, k, v, idx, _ = make(B=1, R=16, T=8, H=2, D=8, K=8)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    xs = [t.requires_grad_() for t in (q, k, v)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fast.forward(*xs, idx, scale=0.3)
    gathered_k = q.numel() * idx.shape[-1] * q.element_size()  # one K-fold copy of K alone
    assert sum(saved) <= 5 * q.numel() * q.element_size(), saved
    assert sum(saved) < gathered_k, (sum(saved), gathered_k)
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in xs)


@pytest.mark.parametrize("mask", [False, True])
def test_no_grad_chunked_and_dense_match_reference(small_chunks: None, mask: bool) -> None:
    # R=16, K=3: chunked path; R=9, K=4, T=4: dense masked SDPA shortcut (K >= R/4)
    for R, K, T, dense in ((16, 3, 5, False), (9, 4, 4, True)):
        q, k, v, idx, kpm = make(R=R, K=K, T=T, mask=mask, seed=R)
        flat = idx[:, 0] + torch.arange(q.shape[0]).view(-1, 1, 1) * R
        assert fast._dense_ok(flat.reshape(-1, K), R, T) == dense
        with torch.no_grad():
            got = fast.forward(q, k, v, idx, scale=0.4, key_padding_mask=kpm)
        exp = reference.forward(q, k, v, idx, scale=0.4, key_padding_mask=kpm)
        assert_close(got, exp, torch.float32, what=f"no-grad R={R} K={K}")


def test_repeated_index_counts_twice_without_grad() -> None:
    """The dense shortcut cannot count a region twice, so repeated indices take the gather path."""
    q, k, v, idx, _ = make(R=6, K=3, T=2, distinct=False, seed=3)
    idx[0, 0, 0] = torch.tensor([2, 2, 5])
    with torch.no_grad():
        got = fast.forward(q, k, v, idx, scale=0.4)
    assert_close(got, reference.forward(q, k, v, idx, scale=0.4), torch.float32, what="repeated index")


def test_half_precision_backward_close_to_fp32(small_chunks: None) -> None:
    q, k, v, idx, kpm = make(mask=True, seed=7)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    exp = _run(reference.forward, q, k, v, idx, kpm, grad)
    got = _run(fast.forward, q.bfloat16(), k.bfloat16(), v.bfloat16(), idx, kpm, grad.bfloat16())
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, exp):
        assert a.dtype == torch.bfloat16
        assert_close(a, e, torch.bfloat16, grad=name != "out", what=f"bf16 {name}")
