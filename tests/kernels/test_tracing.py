"""Every kernel op under the tracers users run: ``torch.export`` with a dynamic batch, ``torch.compile(fullgraph=True)``
(no graph break at the dispatcher) and ``torch.jit.trace``; and the CPU fast paths still run eagerly. Each op sits
behind a ``Linear`` (parameters that require grad, as in a model). ONNX + onnxruntime run on whole models, one per
family, in ``tests/clients/test_export.py``."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import Tensor, nn

from mixerzoo.kernels import (
    linear_attention,
    neighborhood_attention_2d,
    routed_attention,
    window_attention_2d_qkv,
)
from mixerzoo.kernels._dispatch import tracing
from mixerzoo.kernels.neighborhood import fast as na_fast
from mixerzoo.kernels.window import common as win_common

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

C, HEADS = 12, 2  # channels, heads (head dim 6 for q/k/v)


class _Linear(nn.Module):
    """FLatten's focused linear attention on ``[B, N, C]`` tokens (the op whose ``out=`` writes broke ONNX)."""

    fast_fn = "_LinearAttentionFunctionBackward"

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, HEADS, C // HEADS).unbind(2)
        return linear_attention(q, k, v, kernel="focused").reshape(B, N, C)


class _Window(nn.Module):
    """Shifted window attention with a relative position bias on packed q|k|v (the batch loop broke export)."""

    fast_fn = "_PackedWindowAttentionBackward"

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.rpb = nn.Parameter(torch.randn(HEADS, 3, 3) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).view(B, H, W, 3, HEADS, C // HEADS)
        return window_attention_2d_qkv(qkv, 2, shift=1, rpb=self.rpb).reshape(B, H, W, C)


class _Neighborhood(nn.Module):
    """Dilated neighborhood attention with a relative position bias (DiNAT)."""

    fast_fn = "_NeighborhoodTilesFunctionBackward"

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.rpb = nn.Parameter(torch.randn(HEADS, 5, 5) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, _ = x.shape
        q, k, v = self.qkv(x).view(B, H, W, 3, HEADS, C // HEADS).unbind(3)
        return neighborhood_attention_2d(q, k, v, 3, 2, rpb=self.rpb).reshape(B, H, W, C)


class _Routed(nn.Module):
    """BiFormer's routed attention: top-2 of 4 regions by region-mean affinity, with key padding."""

    fast_fn = "_RoutedAttentionFunctionBackward"

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)

    def forward(self, x: Tensor) -> Tensor:
        B, R, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, R, T, 3, HEADS, C // HEADS).unbind(3)
        affinity = q.mean(2).flatten(2) @ k.mean(2).flatten(2).transpose(-1, -2)  # [B, R, R]
        index = affinity.topk(2, dim=-1).indices[:, None]  # [B, 1, R, 2]
        pad = torch.zeros(1, R, T, dtype=torch.bool, device=x.device)
        pad[:, -1, -1] = True
        return routed_attention(q, k, v, index, key_padding_mask=pad).reshape(B, R, T, C)


OPS = {
    "linear": (_Linear, (20, C)),
    "window": (_Window, (4, 6, C)),
    "neighborhood": (_Neighborhood, (8, 7, C)),
    "routed": (_Routed, (4, 5, C)),
}


def _clear_caches() -> None:
    """Start from empty shape caches: a tensor cached while tracing (a fake one) would poison eager calls."""
    win_common._region_labels.cache_clear()
    win_common._bias_index.cache_clear()
    na_fast._plan.cache_clear()
    na_fast._MASKS.clear()


def _model(op: str) -> tuple[nn.Module, tuple[int, ...]]:
    cls, shape = OPS[op]
    return cls().eval(), shape


def test_tracing_flag() -> None:
    def f(x: Tensor) -> Tensor:
        return x + 1 if tracing() else x

    x = torch.zeros(2)
    assert not tracing() and torch.equal(f(x), x)
    assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(x), x + 1)

    class M(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return f(x)

    assert torch.equal(torch.export.export(M(), (x,)).module()(x), x + 1)
    assert torch.equal(torch.fx.symbolic_trace(M())(x), x + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(torch.jit.trace(M(), (x,), check_trace=False)(x), x + 1)


@pytest.mark.parametrize("op", list(OPS))
def test_export_dynamic_batch(op: str) -> None:
    _clear_caches()  # the export below is the first call: nothing it traces may stay cached
    m, shape = _model(op)
    x2, x3 = torch.randn(2, *shape), torch.randn(3, *shape)
    ep = torch.export.export(m, (x2,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    with torch.no_grad():
        want2, want3 = m(x2), m(x3)  # eager after the export: caches hold real tensors
    torch.testing.assert_close(ep.module()(x3), want3, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ep.module()(x2), want2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op", list(OPS))
def test_compile_fullgraph_no_graph_break(op: str) -> None:
    m, shape = _model(op)
    x = torch.randn(2, *shape)
    log = logging.getLogger("mixerzoo.kernels")
    level = log.level
    log.setLevel(logging.DEBUG)  # the dispatcher's debug log was a graph break at every call
    try:
        torch._dynamo.reset()
        out = torch.compile(m, backend="eager", fullgraph=True)(x)
    finally:
        log.setLevel(level)
        torch._dynamo.reset()
    torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op", list(OPS))
def test_eager_keeps_the_fast_path(op: str) -> None:
    m, shape = _model(op)
    out = m(torch.randn(2, *shape))
    seen, names, stack = set(), set(), [out.grad_fn]
    while stack:  # the hand-written autograd Function is in the eager graph
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            names.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
    assert m.fast_fn in names


@pytest.mark.parametrize("op", list(OPS))
def test_jit_trace_equal_eager(op: str) -> None:
    m, shape = _model(op)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        want = m(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(m, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), want, atol=1e-5, rtol=1e-5)
