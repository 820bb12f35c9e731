"""Tests of ``mixerzoo.kernels.linear_attention`` (reference, torch and triton-under-interpreter impls).

Run: ``pytest tests/kernels/test_linear.py``. The Triton cases run in one subprocess with
``TRITON_INTERPRET=1`` (``python tests/kernels/test_linear.py --interp-worker`` prints their JSON results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.kernels import KernelNotSupportedError, explain, linear_attention
from mixerzoo.kernels.linear import fast, reference

sys.path.insert(0, os.path.dirname(__file__))
from _tolerances import assert_close  # noqa: E402

KERNELS = ["identity", "relu", "elu", "focused"]


def make(B=2, N=9, M=7, H=2, D=4, Dv=3, kernel="focused", dtype=torch.float64, seed=0):  # noqa: ANN001, ANN201
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N, H, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, M, H, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, M, H, Dv, generator=gen, dtype=torch.float64)
    if kernel in ("identity", "relu"):  # keep the normaliser well away from 0 (positive features)
        q, k = q.abs() + 0.2, k.abs() + 0.2
    return q.to(dtype), k.to(dtype), v.to(dtype)


def phi_definition(x, kernel, p, feps):  # noqa: ANN001, ANN201
    """φ straight from the definition, per token over all H·D channels (no rescaling tricks)."""
    if kernel == "identity":
        return x
    if kernel == "relu":
        return x.clamp_min(0)
    if kernel == "elu":
        return F.elu(x) + 1
    u = x.clamp_min(0) + feps
    flat = u.flatten(-2)
    up = flat**p
    return (up * flat.norm(dim=-1, keepdim=True) / up.norm(dim=-1, keepdim=True)).view_as(x)


def brute_force(q, k, v, kernel, p=3.0, feps=1e-6, eps=1e-6):  # noqa: ANN001, ANN201
    """Quadratic form: out_i = (1/M Σ_j (φq_i·φk_j) v_j) / (1/M Σ_j φq_i·φk_j + eps), per head, by loops."""
    fq, fk = phi_definition(q, kernel, p, feps), phi_definition(k, kernel, p, feps)
    B, N, H, _ = q.shape
    M = k.shape[1]
    out = torch.zeros(B, N, H, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            sim = fq[b, :, h] @ fk[b, :, h].T  # [N, M]
            out[b, :, h] = (sim @ v[b, :, h] / M) / (sim.sum(-1, keepdim=True) / M + eps)
    return out


@pytest.mark.parametrize("kernel", KERNELS)
def test_reference_matches_brute_force(kernel: str) -> None:
    q, k, v = make(kernel=kernel)
    p = 2.5 if kernel == "focused" else 3.0
    out = reference.forward(q, k, v, kernel=kernel, focusing_factor=p, feature_eps=1e-6, eps=1e-6)
    torch.testing.assert_close(out, brute_force(q, k, v, kernel, p=p), rtol=1e-10, atol=1e-12)


def flatten_module_maths(q, k, v, heads, scale_param, pos, p=3.0):  # noqa: ANN001, ANN201
    """FLatten's FocusedLinearAttention core after its 2024-05 fix (models/flatten_swin.py), [B, N, C] in/out."""
    k = k + pos
    sigma = F.softplus(scale_param)
    q = (F.relu(q) + 1e-6) / sigma
    k = (F.relu(k) + 1e-6) / sigma
    qn, kn = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q**p, k**p
    q, k = q / q.norm(dim=-1, keepdim=True) * qn, k / k.norm(dim=-1, keepdim=True) * kn
    B, N, C = q.shape
    n = k.shape[1]
    q, k, v = (t.reshape(B, -1, heads, C // heads).transpose(1, 2) for t in (q, k, v))
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)
    return (q @ kv * z).transpose(1, 2).reshape(B, N, C)


def test_flatten_recipe_is_exact() -> None:
    """The 'exact' calling recipe in the api docstring reproduces FLatten's module maths."""
    B, N, C, heads = 2, 10, 12, 3
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, N, C, generator=gen, dtype=torch.float64) for _ in range(3))
    scale_param = torch.randn(1, 1, C, generator=gen, dtype=torch.float64)
    pos = torch.randn(1, N, C, generator=gen, dtype=torch.float64) * 0.1
    exp = flatten_module_maths(q, k, v, heads, scale_param, pos)
    sigma = F.softplus(scale_param)
    qs = (F.relu(q) + 1e-6) / sigma
    ks = (F.relu(k + pos) + 1e-6) / sigma
    view = (B, N, heads, C // heads)
    for impl in ("reference", "torch"):
        out = linear_attention(
            qs.view(view), ks.view(view), v.view(view), kernel="focused", feature_eps=0.0, impl=impl
        ).reshape(B, N, C)
        torch.testing.assert_close(out, exp, rtol=1e-10, atol=1e-12)
        fused = linear_attention((q / sigma).view(view), ((k + pos) / sigma).view(view), v.view(view), kernel="focused", impl=impl)
        torch.testing.assert_close(fused.reshape(B, N, C), exp, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("kernel", ["relu", "focused"])
def test_gradcheck(impl: str, kernel: str) -> None:
    q, k, v = make(B=1, N=4, M=3, H=2, D=3, Dv=2, kernel=kernel)
    fn = reference.forward if impl == "reference" else fast.forward
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: fn(a, b, c, kernel=kernel, focusing_factor=3.0, feature_eps=1e-3, eps=1e-6), inputs, fast_mode=True
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("kernel", "p"), [("identity", 3.0), ("relu", 3.0), ("elu", 3.0), ("focused", 3.0), ("focused", 1.7)])
def test_fast_matches_reference(dtype: torch.dtype, kernel: str, p: float) -> None:
    q, k, v = make(B=2, N=33, M=17, H=3, D=8, Dv=5, kernel=kernel, seed=2)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    grad = torch.randn(2, 33, 3, 5, generator=torch.Generator().manual_seed(3)).to(dtype)

    def run(fn, dt):  # noqa: ANN001, ANN202
        xs = [t.to(dt).detach().requires_grad_() for t in (q, k, v)]
        out = fn(*xs, kernel=kernel, focusing_factor=p, feature_eps=1e-6, eps=1e-6)
        out.backward(grad.to(dt))
        return [out, *(x.grad for x in xs)]

    exp = run(reference.forward, torch.float32)
    got = run(fast.forward, dtype)
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, exp):
        assert a.dtype == dtype
        assert_close(a, e, dtype, grad=name != "out", what=f"torch impl {kernel} {name}")


def naive_fp16_focused(q, k, v, p=3.0):  # noqa: ANN001, ANN201
    """What eager FLatten maths does when run in fp16 (no upcast)."""
    fq, fk = phi_definition(q, "focused", p, 1e-6), phi_definition(k, "focused", p, 1e-6)
    s = torch.einsum("bmhd,bmhe->bhde", fk, v)
    z = torch.einsum("bnhd,bhd->bnh", fq, fk.sum(1))
    return torch.einsum("bnhd,bhde->bnhe", fq, s) / (z.unsqueeze(-1) + 1e-6)


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_fp16_overflow_inputs_stay_finite(impl: str) -> None:
    """|x| ~ 60: x^3 and the key sums overflow fp16 (65504) in a naive implementation; ours stays exact."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 64, 2, 16, generator=gen, dtype=torch.float64) * 30 + 30 for _ in range(3))
    q16, k16, v16 = (t.half() for t in (q, k, v))
    assert not torch.isfinite(naive_fp16_focused(q16, k16, v16)).all(), "test inputs must overflow the naive fp16 maths"
    xs = [t.detach().requires_grad_() for t in (q16, k16, v16)]
    out = linear_attention(*xs, kernel="focused", impl=impl)
    out.float().square().mean().backward()
    exp = brute_force(q16.double(), k16.double(), v16.double(), "focused")
    assert_close(out, exp, torch.float16, what="fp16 output")
    assert all(torch.isfinite(x.grad).all() for x in xs)


def test_bf16_huge_inputs_focused() -> None:
    """bf16 inputs of ~1e7: the norm of u^3 (Σ u^6 ~ 1e42) overflows even fp32; the max-rescaled focus map is exact."""
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.rand(1, 16, 2, 8, generator=gen, dtype=torch.float64) * 1e7 for _ in range(2))
    v = torch.randn(1, 16, 2, 8, generator=gen, dtype=torch.float64)
    q, k, v = (t.bfloat16() for t in (q, k, v))
    naive, exact = phi_definition(q.float(), "focused", 3.0, 1e-6), phi_definition(q.double(), "focused", 3.0, 1e-6)
    assert (naive.double() - exact).abs().max() > 0.5 * exact.abs().max(), "inputs must break the naive fp32 maths"
    exp = brute_force(q.double(), k.double(), v.double(), "focused")
    for impl in ("reference", "torch"):
        assert_close(linear_attention(q, k, v, kernel="focused", impl=impl), exp, torch.bfloat16, what=impl)


def test_api_dispatch_and_validation() -> None:
    q, k, v = make(dtype=torch.float32)
    linear_attention(q, k, v, kernel="focused")
    assert "ran 'torch'" in explain("linear_attention")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(KernelNotSupportedError, match="triton"):
            linear_attention(q, k, v, impl="triton")
    with pytest.raises(ValueError, match="kernel must be one of"):
        linear_attention(q, k, v, kernel="softmax")
    with pytest.raises(ValueError, match="focusing_factor"):
        linear_attention(q, k, v, kernel="focused", focusing_factor=0.0)
    with pytest.raises(ValueError, match="v must be"):
        linear_attention(q, k, v[:, :3])
    with pytest.raises(TypeError, match="one floating dtype"):
        linear_attention(q, k, v.double())
    qm = torch.empty(2, 50, 4, 32, device="meta")
    assert linear_attention(qm, qm, qm, kernel="focused").shape == (2, 50, 4, 32)


# ---------------------------------------------------------------------------------------------- triton (interpreter)

# (name, kernel, dtype, focusing factor, make kwargs)
INTERP_CASES = [
    ("focused_fp32_twice", "focused", "float32", 3.0, {}),
    ("focused_fp16", "focused", "float16", 3.0, {}),
    ("focused_bf16_p2.5_odd", "focused", "bfloat16", 2.5, {"D": 12, "Dv": 20, "N": 70, "M": 131}),
    ("relu_fp32", "relu", "float32", 3.0, {}),
    ("elu_bf16", "elu", "bfloat16", 3.0, {}),
    ("identity_fp16_strided", "identity", "float16", 3.0, {"strided": True}),
]


def _interp_worker() -> None:
    from _poison import check_guards, poisoned_allocations  # noqa: PLC0415

    from mixerzoo.kernels.linear import triton as linear_triton  # noqa: PLC0415

    results = {}
    for name, kernel, dt, p, kw in INTERP_CASES:
        dtype = getattr(torch, dt)
        kw = dict(kw)
        strided = kw.pop("strided", False)
        try:
            kw = {"B": 2, "N": 40, "M": 23, "H": 2, "D": 16, "Dv": 8, **kw}
            q, k, v = (t.to(dtype) for t in make(kernel=kernel, seed=6, **kw))
            grad = torch.randn(kw["B"], kw["N"], kw["H"], kw["Dv"], generator=torch.Generator().manual_seed(7)).to(dtype)

            def run(fn, cast, q=q, k=k, v=v, grad=grad, kernel=kernel, p=p):  # noqa: ANN001, ANN202
                xs = [t.to(cast).detach().requires_grad_() for t in (q, k, v)]
                ins = xs
                if strided and fn is not reference.forward:  # heads-last views with padded rows
                    ins = [F.pad(x, (0, 0, 0, 1))[:, :, :-1] for x in xs]
                out = fn(*ins, kernel=kernel, focusing_factor=p, feature_eps=1e-6, eps=1e-6)
                out.backward(grad.to(cast))
                return [out, *(x.grad for x in xs)]

            exp = run(reference.forward, torch.float32)
            with poisoned_allocations():
                got = run(linear_triton.forward, dtype)
                got2 = run(linear_triton.forward, dtype) if name.endswith("_twice") else got
            n_buffers = check_guards()
            for what, a, e in zip(("out", "dq", "dk", "dv"), got, exp):
                assert a.dtype == dtype, f"{what} dtype {a.dtype}"
                assert_close(a, e, dtype, grad=what != "out", what=f"{name} {what}")
            for a, b in zip(got, got2):
                assert torch.equal(a, b), "triton results are not bitwise reproducible"
            results[name] = f"ok ({n_buffers} poisoned buffers)"
        except Exception as err:  # reported to the parent test
            results[name] = f"FAIL {type(err).__name__}: {err}"
    # fp16 inputs that overflow a naive fp16 implementation
    try:
        gen = torch.Generator().manual_seed(4)
        q, k, v = (torch.randn(1, 64, 2, 16, generator=gen, dtype=torch.float64) * 30 + 30 for _ in range(3))
        q16, k16, v16 = (t.half() for t in (q, k, v))
        out = linear_triton.forward(q16, k16, v16, kernel="focused", focusing_factor=3.0, feature_eps=1e-6, eps=1e-6)
        assert_close(out, brute_force(q16.double(), k16.double(), v16.double(), "focused"), torch.float16, what="overflow")
        results["fp16_overflow"] = "ok"
    except Exception as err:
        results["fp16_overflow"] = f"FAIL {type(err).__name__}: {err}"
    try:
        q, k, v = (t.float().requires_grad_() for t in make(B=1, N=8, M=8, H=2, D=16, Dv=16))
        torch.library.opcheck(
            torch.ops.mixerzoo.linear_attention_fwd,
            (q, k, v, 3, 3.0, 1e-6, 1e-6),
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


@pytest.mark.parametrize("case", [c[0] for c in INTERP_CASES] + ["fp16_overflow", "opcheck"])
def test_triton_interpreter(interp_results: dict[str, str], case: str) -> None:
    assert interp_results[case].startswith("ok"), interp_results[case]


if __name__ == "__main__":
    if "--interp-worker" in sys.argv:
        torch.manual_seed(0)
        _interp_worker()
