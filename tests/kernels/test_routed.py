"""Tests of ``mixerzoo.kernels.routed_attention`` (reference, torch and triton-under-interpreter impls).

Run: ``pytest tests/kernels/test_routed.py``. The Triton cases run in one subprocess with
``TRITON_INTERPRET=1`` (``python tests/kernels/test_routed.py --interp-worker`` prints their JSON results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.kernels import KernelNotSupportedError, explain, routed_attention
from mixerzoo.kernels.routed import fast, reference, region_merge, region_partition

sys.path.insert(0, os.path.dirname(__file__))
from _tolerances import assert_close  # noqa: E402


def make(B=2, R=6, T=5, H=2, D=8, Dv=None, K=3, G=1, mask=False, dtype=torch.float64, seed=0):  # noqa: ANN001, ANN201
    """Random problem; with ``mask`` region 0 of batch 0's first routed region is entirely padding."""
    gen = torch.Generator().manual_seed(seed)
    Dv = Dv or D
    q = torch.randn(B, R, T, H, D, generator=gen).to(dtype)
    k = torch.randn(B, R, T, H, D, generator=gen).to(dtype)
    v = torch.randn(B, R, T, H, Dv, generator=gen).to(dtype)
    idx = torch.rand(B, G, R, R, generator=gen).topk(K, dim=-1).indices
    kpm = None
    if mask:
        kpm = torch.rand(B, R, T, generator=gen) < 0.3
        kpm[0, idx[0, 0, 1]] = True  # every key routed to (b=0, g=0, region 1) is padding
    return q, k, v, idx, kpm


def brute_force(q, k, v, idx, kpm, scale):  # noqa: ANN001, ANN201
    """Dense attention over all R*T tokens with a boolean mask built straight from the definition."""
    B, R, T, H, D = q.shape
    G, K = idx.shape[1], idx.shape[3]
    allowed = torch.zeros(B, H, R, T, R, T, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for r in range(R):
                for j in range(K):
                    allowed[b, h, r, :, idx[b, h if G > 1 else 0, r, j], :] = True
    if kpm is not None:
        allowed &= ~kpm.expand(B, R, T)[:, None, None, None]
    allowed = allowed.reshape(B, H, R * T, R * T)
    qd = q.reshape(B, R * T, H, D).transpose(1, 2)
    kd = k.reshape(B, R * T, H, D).transpose(1, 2)
    vd = v.reshape(B, R * T, H, -1).transpose(1, 2)
    s = (qd @ kd.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.nan_to_num(s.softmax(-1), nan=0.0)  # queries with no allowed key -> 0
    return (p @ vd).transpose(1, 2).reshape(B, R, T, H, -1)


# ---------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("mask", [False, True])
def test_reference_matches_brute_force(G: int, mask: bool) -> None:
    q, k, v, idx, kpm = make(G=G, mask=mask, Dv=7)
    out = reference.forward(q, k, v, idx, scale=0.37, key_padding_mask=kpm)
    exp = brute_force(q, k, v, idx, kpm, 0.37)
    torch.testing.assert_close(out, exp, rtol=1e-12, atol=1e-12)
    if mask:
        assert (out[0, 1, :, 0] == 0).all(), "a region whose routed keys are all padding must output 0"


def test_reference_gradcheck() -> None:
    q, k, v, idx, kpm = make(B=1, R=3, T=2, H=2, D=3, K=2, G=2, mask=True)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: reference.forward(a, b, c, idx, scale=0.5, key_padding_mask=kpm), inputs, fast_mode=True
    )


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_all_regions_is_dense_attention(impl: str) -> None:
    """Routing every query region to all regions (any order) is ordinary full attention."""
    B, R, T, H, D = 2, 5, 4, 2, 8
    q, k, v, _, _ = make(B=B, R=R, T=T, H=H, D=D)
    idx = torch.stack([torch.randperm(R) for _ in range(B * R)]).view(B, 1, R, R)
    out = routed_attention(q, k, v, idx, scale=0.3, impl=impl)
    flat = [t.reshape(B, R * T, H, -1).transpose(1, 2) for t in (q, k, v)]
    dense = F.scaled_dot_product_attention(*flat, scale=0.3).transpose(1, 2).reshape(B, R, T, H, D)
    torch.testing.assert_close(out, dense, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- torch impl


def test_fast_gradcheck() -> None:
    q, k, v, idx, kpm = make(B=1, R=3, T=2, H=2, D=3, K=2, G=1, mask=True)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: fast.forward(a, b, c, idx, scale=0.5, key_padding_mask=kpm), inputs, fast_mode=True
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("G", "mask", "T", "Dv"), [(1, False, 5, 8), (2, True, 7, 5), (1, True, 16, 8)])
def test_fast_matches_reference(dtype: torch.dtype, G: int, mask: bool, T: int, Dv: int) -> None:
    q, k, v, idx, kpm = make(B=2, R=7, T=T, H=2, D=8, Dv=Dv, K=3, G=G, mask=mask, dtype=dtype, seed=1)
    grad = torch.randn(q.shape[:-1] + (Dv,), dtype=torch.float64).to(dtype)

    def run(fn, dt):  # noqa: ANN001, ANN202
        xs = [t.to(dt).detach().requires_grad_() for t in (q, k, v)]
        out = fn(*xs, idx, scale=0.35, key_padding_mask=kpm)
        out.backward(grad.to(dt))
        return [out, *(x.grad for x in xs)]

    exp = run(reference.forward, torch.float32)  # fp32 oracle on the same (rounded) inputs
    got = run(fast.forward, dtype)
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, exp):
        assert a.dtype == dtype
        assert_close(a, e, dtype, grad=name != "out", what=f"torch impl {name}")


def test_fast_backward_is_deterministic() -> None:
    q, k, v, idx, kpm = make(B=2, R=9, T=6, H=2, D=8, K=4, dtype=torch.float32, mask=True)
    grads = []
    for _ in range(2):
        xs = [t.detach().requires_grad_() for t in (q, k, v)]
        fast.forward(*xs, idx, scale=0.3, key_padding_mask=kpm).square().sum().backward()
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_fast_strided_views_and_meta() -> None:
    """q/k/v as views of one qkv tensor (how BiFormer's mixer feeds it) and shape inference on meta."""
    B, R, T, H, D = 1, 4, 4, 2, 8
    qkv = torch.randn(B, R, T, 3, H, D, dtype=torch.float64)
    q, k, v = qkv.unbind(3)
    idx = torch.tensor([[[0, 1], [1, 2], [2, 3], [3, 0]]]).view(B, 1, R, 2)
    torch.testing.assert_close(
        fast.forward(q, k, v, idx, scale=0.2), reference.forward(q.contiguous(), k.contiguous(), v.contiguous(), idx, scale=0.2)
    )
    qm = torch.empty(2, 9, 16, 4, 32, device="meta")
    out = routed_attention(qm, qm, qm, torch.empty(2, 1, 9, 4, dtype=torch.long, device="meta"))
    assert out.shape == (2, 9, 16, 4, 32) and out.device.type == "meta"


# ---------------------------------------------------------------------------------------------- api


def test_auto_on_cpu_picks_torch_and_explains() -> None:
    q, k, v, idx, _ = make(dtype=torch.float32)
    routed_attention(q, k, v, idx)
    msg = explain("routed_attention")
    assert "ran 'torch'" in msg and "triton:" in msg, msg


def test_explicit_triton_on_cpu_raises() -> None:
    q, k, v, idx, _ = make(dtype=torch.float32)
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter makes triton runnable on CPU")
    with pytest.raises(KernelNotSupportedError, match="triton"):
        routed_attention(q, k, v, idx, impl="triton")


def test_validation_messages() -> None:
    q, k, v, idx, _ = make(dtype=torch.float32)
    with pytest.raises(ValueError, match="q must be"):
        routed_attention(q[0], k, v, idx)
    with pytest.raises(ValueError, match="topk_index must be"):
        routed_attention(q, k, v, idx[:, :, :2])
    with pytest.raises(IndexError, match=r"\[0, 6\)"):
        routed_attention(q, k, v, idx + 10)
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        routed_attention(q, k, v, idx, key_padding_mask=torch.zeros(1, 6, 5))
    with pytest.raises(ValueError, match="impl="):
        routed_attention(q, k, v, idx, impl="cuda")


def test_three_dim_index_and_default_scale() -> None:
    q, k, v, idx, _ = make()
    out = routed_attention(q, k, v, idx[:, 0], impl="reference")
    torch.testing.assert_close(out, reference.forward(q, k, v, idx, scale=8**-0.5))


def test_region_partition_padding_and_masking() -> None:
    """Arbitrary map size: pad to the grid, mask the padding, crop; equals attention over the real tokens only."""
    B, Hh, Ww, C, n = 1, 7, 9, 8, 2  # regions of 4x5 after padding to 8x10
    x = torch.randn(B, Hh, Ww, C, dtype=torch.float64)
    xr, kpm = region_partition(x, n)
    assert xr.shape == (B, 4, 20, C) and kpm is not None and kpm.shape == (1, 4, 20)
    assert int((~kpm).sum()) == Hh * Ww
    torch.testing.assert_close(region_merge(xr, n, (Hh, Ww)), x)
    qkv = xr.view(B, 4, 20, 1, C)
    idx = torch.arange(4).view(1, 1, 1, 4).expand(B, 1, 4, 4)  # all regions: dense attention over real tokens
    out = region_merge(routed_attention(qkv, qkv, qkv, idx, scale=0.3, key_padding_mask=kpm).view(B, 4, 20, C), n, (Hh, Ww))
    flat = x.reshape(B, 1, Hh * Ww, C)
    dense = F.scaled_dot_product_attention(flat, flat, flat, scale=0.3).view(B, Hh, Ww, C)
    torch.testing.assert_close(out, dense)
    assert region_partition(torch.randn(1, 8, 8, 4), 4)[1] is None


# ---------------------------------------------------------------------------------------------- triton (interpreter)

# (name, dtype, make kwargs)
INTERP_CASES = [
    ("fp32_gH_mask_twice", "float32", {"G": 2, "mask": True, "B": 2}),  # also run twice: bitwise reproducible
    ("fp32_all_regions_T4", "float32", {"R": 4, "T": 4, "K": 4}),
    ("fp16_g1_mask", "float16", {"G": 1, "mask": True}),
    ("fp16_gH_strided", "float16", {"G": 2, "strided": True}),
    ("bf16_g1_mask_odd_dims", "bfloat16", {"G": 1, "mask": True, "D": 24, "Dv": 20}),
    ("bf16_gH_T20", "bfloat16", {"G": 2, "T": 20, "R": 3, "K": 2}),
]


def _interp_worker() -> None:
    """Run every INTERP_CASES case with triton (interpreter) vs the fp32 reference; print JSON results."""
    from _poison import check_guards, poisoned_allocations  # noqa: PLC0415

    from mixerzoo.kernels.routed import triton as routed_triton  # noqa: PLC0415

    results = {}
    for name, dt, kw in INTERP_CASES:
        dtype = getattr(torch, dt)
        kw = dict(kw)
        strided = kw.pop("strided", False)
        try:
            kw = {"B": 1, "R": 5, "D": 16, **kw}
            q, k, v, idx, kpm = make(dtype=torch.float32, seed=3, **kw)
            q, k, v = (t.to(dtype) for t in (q, k, v))
            grad = torch.randn(v.shape, generator=torch.Generator().manual_seed(5)).to(dtype)

            def run(fn, cast, q=q, k=k, v=v, idx=idx, kpm=kpm, grad=grad):  # noqa: ANN001, ANN202
                xs = [t.to(cast).detach().requires_grad_() for t in (q, k, v)]
                if strided and fn is not reference.forward:  # q, k, v as unbind views of one tensor
                    qkv = torch.stack([x.detach() for x in xs], dim=3).requires_grad_()
                    ins = list(qkv.unbind(3))
                    out = fn(*ins, idx, scale=0.3, key_padding_mask=kpm)
                    out.backward(grad.to(cast))
                    return [out, *qkv.grad.unbind(3)]
                out = fn(*xs, idx, scale=0.3, key_padding_mask=kpm)
                out.backward(grad.to(cast))
                return [out, *(x.grad for x in xs)]

            exp = run(reference.forward, torch.float32)
            with poisoned_allocations():
                got = run(routed_triton.forward, dtype)
                got2 = run(routed_triton.forward, dtype) if name.endswith("_twice") else got
            n_buffers = check_guards()
            for what, a, e in zip(("out", "dq", "dk", "dv"), got, exp):
                assert a.dtype == dtype, f"{what} dtype {a.dtype}"
                assert_close(a, e, dtype, grad=what != "out", what=f"{name} {what}")
            for a, b in zip(got, got2):
                assert torch.equal(a, b), "triton results are not bitwise reproducible"
            results[name] = f"ok ({n_buffers} poisoned buffers)"
        except Exception as err:  # reported to the parent test
            results[name] = f"FAIL {type(err).__name__}: {err}"
    # the registered op: schema, fake/meta propagation, autograd registration
    try:
        q, k, v, idx, kpm = make(B=1, R=4, T=4, H=1, D=16, K=2, dtype=torch.float32, mask=True)
        args = ([t.requires_grad_() for t in (q, k, v)], idx, kpm)
        # fake-tensor propagation is checked without the interpreter in test_aot_routed_linear.py
        torch.library.opcheck(
            torch.ops.mixerzoo.routed_attention_fwd,
            (*args[0], idx, kpm, 0.3),
            test_utils=("test_schema", "test_autograd_registration"),
        )
        results["opcheck"] = "ok"
    except Exception as err:
        results["opcheck"] = f"FAIL {type(err).__name__}: {err}"
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def interp_results() -> dict[str, str]:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--interp-worker"], capture_output=True, text=True, env=env, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"worker failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.mark.parametrize("case", [c[0] for c in INTERP_CASES] + ["opcheck"])
def test_triton_interpreter(interp_results: dict[str, str], case: str) -> None:
    assert interp_results[case].startswith("ok"), interp_results[case]


if __name__ == "__main__":
    if "--interp-worker" in sys.argv:
        torch.manual_seed(0)
        _interp_worker()
