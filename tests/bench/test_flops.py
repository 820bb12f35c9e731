"""FLOP accounting of the sparse attention ops (``mixerzoo.kernels._flops``).

Each public op must be charged what it computes under ``FlopCounterMode`` (forward = formula, backward =
2 x formula), whatever implementation runs, and the accounting must not change outputs or gradients.
``charge`` is tested around every op from the outside (always); the ops' own hooks (requested in
/work/notes/kernel_requests.md) are checked directly and xfail until the hook is in the op's api.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mixerzoo.kernels import _flops


def _na_case(device: str = "cpu"):
    from mixerzoo.kernels.neighborhood.api import neighborhood_attention_2d as op

    g = torch.Generator().manual_seed(0)
    shape = (1, 9, 10, 2, 8)
    q, k, v = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=g).to(device)
    return (
        op, (q, k, v), dict(kernel_size=3, rpb=rpb),
        lambda q, k, v, rpb: op(q, k, v, 3, rpb=rpb), (q, k, v, rpb),
        _flops.na2d_flops(q.shape, v.shape, 3), q.shape,
    )  # fmt: skip


def _routed_case(device: str = "cpu"):
    from mixerzoo.kernels.routed.api import routed_attention as op

    g = torch.Generator().manual_seed(0)
    B, R, T, H, D = 1, 4, 5, 2, 8
    q, k, v = (torch.randn(B, R, T, H, D, generator=g).to(device) for _ in range(3))
    idx = torch.stack([torch.randperm(R, generator=g)[:2] for _ in range(R)])[None].to(device)  # [B, R, K=2]
    return (
        op, (q, k, v, idx), dict(scale=0.3),
        lambda q, k, v, i: op(q, k, v, i, scale=0.3), (q, k, v, idx),
        _flops.routed_flops(q.shape, v.shape, 2), q.shape,
    )  # fmt: skip


def _linear_case(device: str = "cpu"):
    from mixerzoo.kernels.linear.api import linear_attention as op

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, 2, 8, generator=g).to(device)
    k = torch.randn(2, 7, 2, 8, generator=g).to(device)
    v = torch.randn(2, 7, 2, 6, generator=g).to(device)
    return (
        op, (q, k, v), dict(kernel="focused"),
        lambda q, k, v: op(q, k, v, kernel="focused"), (q, k, v),
        _flops.linear_attention_flops(q.shape, k.shape, v.shape), (2, 12, 2, 6),
    )  # fmt: skip


def _window_case(device: str = "cpu"):
    from mixerzoo.kernels.window.api import window_attention_2d as op

    g = torch.Generator().manual_seed(0)
    shape = (1, 8, 12, 2, 8)
    q, k, v = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    rpb = torch.randn(2, 7, 7, generator=g).to(device)
    return (
        op, (q, k, v, 4), dict(shift=2, rpb=rpb),
        lambda q, k, v, rpb: op(q, k, v, 4, shift=2, rpb=rpb), (q, k, v, rpb),
        _flops.dense_attention_flops(1 * 2 * 6, 16, 16, 8, 8), q.shape,
    )  # fmt: skip


CASES = {"neighborhood": _na_case, "routed": _routed_case, "linear": _linear_case, "window": _window_case}
MODULES = {
    "neighborhood": "mixerzoo.kernels.neighborhood.api",
    "routed": "mixerzoo.kernels.routed.api",
    "linear": "mixerzoo.kernels.linear.api",
    "window": "mixerzoo.kernels.window.api",
}


def _case(name: str, device: str = "cpu"):
    try:
        return CASES[name](device)
    except ImportError as err:  # the op has not landed yet
        pytest.skip(f"{name} op not importable: {err}")


def _grads(out: torch.Tensor, tensors) -> list[torch.Tensor | None]:
    wants = [t for t in tensors if t is not None and t.is_floating_point()]
    return list(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), wants))


def _leafs(tensors):
    return tuple(t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None for t in tensors)


@pytest.mark.parametrize("name", list(CASES))
def test_charge_counts_formula_and_keeps_values(name: str) -> None:
    _, _, _, fn, tensors, flops, out_shape = _case(name)
    ref_in = _leafs(tensors)
    ref = fn(*ref_in)
    ref_g = _grads(ref, ref_in)
    got_in = _leafs(tensors)
    with FlopCounterMode(display=False) as counter:
        assert _flops.counting()
        out = _flops.charge(name, flops, fn, got_in, out_shape, torch.float32)
        got_g = _grads(out, got_in)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counts == {"mixerzoo_flops.charged": flops, "mixerzoo_flops.charged_bwd": 2 * flops}
    # same implementation; only SDPA's backend choice may differ between grad and no-grad mode (~1 ulp)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_charge_on_meta(name: str) -> None:
    _, _, _, fn, tensors, flops, out_shape = _case(name)
    meta = tuple(t.to("meta") if t is not None else None for t in tensors)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = _flops.charge(name, flops, fn, meta, out_shape, torch.float32)
    assert out.device.type == "meta" and tuple(out.shape) == tuple(out_shape)
    assert counter.get_total_flops() == flops


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name", list(CASES))
def test_public_op_is_charged_its_formula(name: str, device: str) -> None:
    """The op's own hook: a plain ``FlopCounterMode`` around the public op counts the formula."""
    op, args, kwargs, _, _, flops, _ = _case(name)
    import importlib

    src = inspect.getsource(importlib.import_module(MODULES[name]))
    if "_flops.counting()" not in src:
        pytest.xfail(f"{MODULES[name]} has no _flops hook yet (see /work/notes/kernel_requests.md)")
    move = (lambda t: t.to(device) if isinstance(t, torch.Tensor) else t)
    args = tuple(move(a) for a in args)
    kwargs = {k: move(v) for k, v in kwargs.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        op(*args, **kwargs)
    assert counter.get_total_flops() == flops


def test_counting_switch() -> None:
    assert not _flops.counting()
    with _flops.sparse_flop_counting(True):
        assert _flops.counting()
        with _flops.sparse_flop_counting(False), FlopCounterMode(display=False):
            assert not _flops.counting()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        with _flops.sparse_flop_counting("yes"):  # type: ignore[arg-type]
            pass


def test_counter_built_before_import_falls_back() -> None:
    """A counter whose registry lacks the accounting formula must not charge 0: counting() stays False."""
    counter = FlopCounterMode(display=False)
    del counter.flop_registry[torch.ops.mixerzoo_flops.charged]
    with counter:
        assert not _flops.counting()


def test_charge_validates_arguments() -> None:
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="at least one tensor"):
        _flops.charge("op", 1, lambda a: a, (None,), (2,), torch.float32)
    with pytest.raises(ValueError, match="flops must be a non-negative int"):
        _flops.charge("op", -1, lambda a: a, (x,), (2,), torch.float32)
    with _flops.sparse_flop_counting(True), pytest.raises(RuntimeError, match="out_shape"):
        _flops.charge("op", 1, lambda a: a * 2, (x,), (3,), torch.float32)


def test_formulas_match_papers() -> None:
    # NAT: QK and AV each H*W*K^2*C MACs -> 2 * H*W*K^2*C MACs = 4 * H*W*K^2*C FLOPs
    H = W = 56
    heads, d = 2, 32
    assert _flops.na2d_flops((1, H, W, heads, d), (1, H, W, heads, d), 7) == 4 * H * W * 49 * heads * d
    # routed: every query sees topk*T keys
    assert _flops.routed_flops((1, 49, 64, 2, 32), (1, 49, 64, 2, 32), 4) == 2 * 49 * 64 * 2 * 4 * 64 * 64
    expected = 2 * (6 * 4 * 5 + 10 * 4 * 5 + 10 * 4)  # S = K^T V, Q S, Q z
    assert _flops.linear_attention_flops((1, 10, 1, 4), (1, 6, 1, 4), (1, 6, 1, 5)) == expected


def test_kernel_op_formulas_register_idempotently() -> None:
    _flops.register_kernel_formulas()
    assert _flops.register_kernel_formulas() == []
