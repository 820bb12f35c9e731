"""neighborhood_attention_2d: reference vs a brute-force definition, gradcheck, properties, the fast
PyTorch path vs the reference (forward and all gradients), the Triton kernels under the interpreter,
API validation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from _tolerances import assert_close

from mixerzoo.kernels import KernelNotSupportedError, explain, neighborhood_attention_2d
from mixerzoo.kernels.neighborhood import fast

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


# --- an independent definition: dense attention with a mask built query by query ------------------


def _axis_rule(length: int, kernel: int, dilation: int):
    """For every query i: the set of visible key indices and their bias index (NATTEN's 1-D rule,
    written out with Python ints)."""
    rule = []
    for i in range(length):
        group, j = i % dilation, i // dilation
        group_len = math.ceil((length - group) / dilation)
        start = min(max(j - kernel // 2, 0), group_len - kernel)
        rule.append({group + dilation * (start + t): start + t - j + kernel - 1 for t in range(kernel)})
    return rule


def brute_force(q, k, v, kernel_size, dilation, rpb=None, scale=None):
    b, height, width, heads, dim = q.shape
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    scale = dim**-0.5 if scale is None else scale
    ry, rx = _axis_rule(height, kh, dh), _axis_rule(width, kw, dw)
    n = height * width
    rows, cols, bys, bxs = [], [], [], []  # every visible (query, key) pair, listed explicitly
    for qy in range(height):
        for qx in range(width):
            for ky, by in ry[qy].items():
                for kx, bx in rx[qx].items():
                    rows.append(qy * width + qx)
                    cols.append(ky * width + kx)
                    bys.append(by)
                    bxs.append(bx)
    bias = torch.full((heads, n, n), float("-inf"), dtype=torch.float64)
    bias[:, rows, cols] = 0.0 if rpb is None else rpb.double()[:, bys, bxs]
    qf, kf, vf = (x.double().reshape(b, n, heads, dim).transpose(1, 2) for x in (q, k, v))
    attn = (qf @ kf.transpose(-1, -2) * scale + bias).softmax(-1)
    return (attn @ vf).transpose(1, 2).reshape(b, height, width, heads, dim)


def _inputs(shape, *, dtype=torch.float64, seed=0, rpb_k=None, grad=False):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad) for _ in range(3))
    rpb = None
    if rpb_k is not None:
        kh, kw = rpb_k
        rpb = (
            torch.randn((shape[3], 2 * kh - 1, 2 * kw - 1), generator=gen, dtype=torch.float64)
            .to(dtype)
            .requires_grad_(grad)
        )
    return q, k, v, rpb


# (H, W), kernel, dilation, with rpb
GEOMETRY = [
    ((7, 7), 3, 1, True),  # small, borders everywhere
    ((9, 11), (3, 5), (2, 1), True),  # per-axis kernel and dilation, L % d != 0
    ((10, 9), 5, 1, False),
    ((13, 13), 13, 1, True),  # window == map
    ((12, 14), (5, 3), (2, 3), True),  # uneven dilation groups on both axes
    ((9, 8), 3, (3, 2), False),  # H == K * d exactly
]


@pytest.mark.parametrize("hw,ks,dil,use_rpb", GEOMETRY)
def test_reference_matches_brute_force(hw, ks, dil, use_rpb):
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    q, k, v, rpb = _inputs((2, *hw, 2, 4), rpb_k=(kh, kw) if use_rpb else None)
    out = neighborhood_attention_2d(q, k, v, ks, dil, rpb=rpb, impl="reference")
    torch.testing.assert_close(out, brute_force(q, k, v, ks, dil, rpb), rtol=0, atol=1e-12)


def test_border_bias_is_asymmetric():
    """The top-left query sees bias indices K-1 .. 2K-2 only (NATTEN's shifted window)."""
    q = torch.zeros(1, 5, 5, 1, 2, dtype=torch.float64)
    k = torch.zeros_like(q)
    v = torch.arange(25, dtype=torch.float64).view(1, 5, 5, 1, 1).expand(1, 5, 5, 1, 2).contiguous()
    rpb = torch.full((1, 5, 5), -1e9, dtype=torch.float64)
    rpb[0, 4, 4] = 0.0  # offset (+2, +2): only the top-left query has its window's corner there
    out = neighborhood_attention_2d(q, k, v, 3, rpb=rpb, impl="reference")
    assert out[0, 0, 0, 0, 0].item() == pytest.approx(12.0)  # key (2, 2)
    assert out[0, 2, 2, 0, 0].item() == pytest.approx(v[0, 1:4, 1:4, 0, 0].mean().item())  # centre: all -1e9


def test_reference_gradcheck():
    q, k, v, rpb = _inputs((1, 5, 6, 1, 3), rpb_k=(3, 3), grad=True)
    fn = lambda q, k, v, rpb: neighborhood_attention_2d(q, k, v, 3, (1, 2), rpb=rpb, impl="reference")
    assert torch.autograd.gradcheck(fn, (q, k, v, rpb), fast_mode=True)


def test_fast_gradcheck():
    q, k, v, rpb = _inputs((1, 6, 5, 2, 2), rpb_k=(3, 3), grad=True)
    fn = lambda q, k, v, rpb: neighborhood_attention_2d(q, k, v, 3, (2, 1), rpb=rpb, impl="torch")
    assert torch.autograd.gradcheck(fn, (q, k, v, rpb), fast_mode=True)


def test_whole_map_window_is_dense_attention():
    q, k, v, _ = _inputs((2, 7, 5, 2, 8))
    out = neighborhood_attention_2d(q, k, v, (7, 5), impl="reference")
    dense = F.scaled_dot_product_attention(*(x.flatten(1, 2).transpose(1, 2) for x in (q, k, v)))
    torch.testing.assert_close(out, dense.transpose(1, 2).reshape(q.shape), rtol=0, atol=1e-12)


def test_dilation_is_na_on_sublattices():
    q, k, v, rpb = _inputs((1, 11, 10, 2, 4), rpb_k=(3, 3))
    out = neighborhood_attention_2d(q, k, v, 3, 2, rpb=rpb, impl="reference")
    for gy in range(2):
        for gx in range(2):
            sub = [x[:, gy::2, gx::2] for x in (q, k, v)]
            torch.testing.assert_close(
                out[:, gy::2, gx::2], neighborhood_attention_2d(*sub, 3, rpb=rpb, impl="reference")
            )


# --- fast path vs reference ----------------------------------------------------------------------

FAST_CASES = [
    # (shape, kernel, dilation, rpb, tile, chunk_elems)
    ((2, 12, 13, 2, 8), 3, 1, True, None, None),
    ((1, 20, 17, 2, 4), (5, 7), 1, True, (3, 5), None),  # several tiles, overlapping last tile
    ((1, 20, 17, 2, 4), (3, 3), (3, 2), True, (2, 2), 64),  # dilation + many chunks
    ((2, 14, 14, 1, 8), 7, 2, False, None, None),  # tile clipped to the group length
    ((1, 16, 16, 2, 4), 7, 1, True, (4, 4), 1000),  # chunked backward
]


@pytest.mark.parametrize("shape,ks,dil,use_rpb,tile,chunk", FAST_CASES)
def test_fast_matches_reference(shape, ks, dil, use_rpb, tile, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(fast, "_CHUNK_ELEMS", chunk)
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    q, k, v, rpb = _inputs(shape, rpb_k=(kh, kw) if use_rpb else None, grad=True)
    inputs = [x for x in (q, k, v, rpb) if x is not None]
    scale = 0.7
    out = fast.forward(q, k, v, (kh, kw), (dil, dil) if isinstance(dil, int) else dil, rpb, scale, tile=tile)
    ref = neighborhood_attention_2d(q, k, v, ks, dil, rpb=rpb, scale=scale, impl="reference")
    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, grad_out)
    want = torch.autograd.grad(ref, inputs, grad_out)
    assert_close(out, ref, torch.float64, what="out")
    for name, g, w in zip(("dq", "dk", "dv", "drpb"), got, want):
        assert_close(g, w, torch.float64, grad=True, what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_low_precision(dtype):
    q, k, v, rpb = _inputs((1, 11, 9, 2, 16), dtype=dtype, rpb_k=(5, 5), grad=True)
    inputs = [q, k, v, rpb]
    out = neighborhood_attention_2d(q, k, v, 5, rpb=rpb, impl="torch")
    assert out.dtype == dtype
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    ref = neighborhood_attention_2d(*ref_in[:3], 5, rpb=ref_in[3], impl="reference")
    grad_out = torch.randn_like(ref)
    assert_close(out.float(), ref, dtype, what="out")
    for name, g, w in zip(
        "qkvb", torch.autograd.grad(out, inputs, grad_out.to(dtype)), torch.autograd.grad(ref, ref_in, grad_out)
    ):
        assert_close(g.float(), w, dtype, grad=True, what=name)


# --- Triton under the interpreter (one subprocess for all cases) ----------------------------------

sys.path.insert(0, HERE)
from _neighborhood_interp import CASES as INTERP_CASES


@pytest.fixture(scope="module")
def interp_results():
    pytest.importorskip("triton")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_neighborhood_interp.py")],
        capture_output=True,
        check=False,  # failures are reported per case below
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            results[rec["id"]] = rec
    if not results:
        pytest.fail(f"interpreter worker produced no results (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return results


@pytest.mark.parametrize("case_id", [c[0] for c in INTERP_CASES] + ["opcheck"])
def test_triton_interpreter(interp_results, case_id):
    assert case_id in interp_results, f"worker did not report {case_id}"
    rec = interp_results[case_id]
    assert rec["ok"], rec["msg"]


# --- API -----------------------------------------------------------------------------------------


def test_auto_on_cpu_uses_fast_path():
    q, k, v, _ = _inputs((1, 8, 8, 1, 4), dtype=torch.float32)
    neighborhood_attention_2d(q, k, v, 3)
    assert "ran 'torch'" in explain("neighborhood_attention_2d")


def test_explicit_triton_on_cpu_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, _ = _inputs((1, 8, 8, 1, 4), dtype=torch.float32)
    with pytest.raises(KernelNotSupportedError, match="triton"):
        neighborhood_attention_2d(q, k, v, 3, impl="triton")


def test_meta_device_shape_inference():
    q = torch.empty((2, 30, 31, 4, 32), device="meta", dtype=torch.bfloat16)
    out = neighborhood_attention_2d(q, q, q, 7, 2, rpb=torch.empty((4, 13, 13), device="meta"))
    assert out.shape == q.shape and out.device.type == "meta" and out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"kernel_size": 7, "shape": (1, 6, 9, 1, 4)}, ValueError, r"H = 6 .*7 \* 1 = 7"),
        ({"kernel_size": 3, "dilation": (1, 4), "shape": (1, 9, 11, 1, 4)}, ValueError, r"W = 11 .*3 \* 4 = 12"),
        ({"kernel_size": 4}, ValueError, "kernel_size must be odd.*4"),
        ({"kernel_size": (3, 3, 3)}, TypeError, r"kernel_size must be an int or a pair.*\(3, 3, 3\)"),
        ({"kernel_size": 3, "dilation": 0}, ValueError, "dilation must be >= 1.*0"),
        ({"kernel_size": 3, "rpb_shape": (1, 3, 3)}, ValueError, r"rpb must have shape .*\(1, 5, 5\).*\(1, 3, 3\)"),
        ({"kernel_size": 3, "shape": (8, 8, 1, 4)}, ValueError, r"q must be 5-D.*\(8, 8, 1, 4\)"),
        ({"kernel_size": 3, "k_shape": (1, 8, 8, 2, 4)}, ValueError, r"k must have q's shape"),
        ({"kernel_size": 3, "v_dtype": torch.float64}, TypeError, "v must have q's dtype"),
    ],
)
def test_validation_errors(kwargs, exc, match):
    shape = kwargs.get("shape", (1, 8, 8, 1, 4))
    q = torch.randn(shape)
    k = torch.randn(kwargs.get("k_shape", shape))
    v = torch.randn(shape, dtype=kwargs.get("v_dtype", torch.float32))
    rpb = torch.zeros(kwargs["rpb_shape"]) if "rpb_shape" in kwargs else None
    with pytest.raises(exc, match=match):
        neighborhood_attention_2d(q, k, v, kwargs["kernel_size"], kwargs.get("dilation", 1), rpb=rpb)


def test_unknown_impl_raises():
    q, k, v, _ = _inputs((1, 8, 8, 1, 4), dtype=torch.float32)
    with pytest.raises(ValueError, match="impl='cuda'"):
        neighborhood_attention_2d(q, k, v, 3, impl="cuda")


def test_noncontiguous_inputs_and_mixed_rpb_dtype():
    """Mixers split q, k, v out of one projection (strided views) and keep rpb in float32 under AMP."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn((1, 9, 10, 3, 2, 8), generator=gen).to(torch.bfloat16).requires_grad_()
    q, k, v = qkv.unbind(3)
    rpb = torch.randn((2, 9, 9), generator=gen).requires_grad_()
    out = neighborhood_attention_2d(q, k, v, 5, rpb=rpb, impl="torch")
    assert out.dtype == torch.bfloat16
    ref = neighborhood_attention_2d(*(x.detach().float() for x in (q, k, v)), 5, rpb=rpb.detach(), impl="reference")
    assert_close(out.float(), ref, torch.bfloat16, what="out")
    out.float().sum().backward()
    assert qkv.grad is not None and rpb.grad is not None and rpb.grad.dtype == torch.float32
    assert torch.isfinite(qkv.grad.float()).all() and torch.isfinite(rpb.grad).all()
