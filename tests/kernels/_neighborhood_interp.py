"""Run the Triton neighborhood-attention kernels under ``TRITON_INTERPRET=1`` (subprocess worker).

``python _neighborhood_interp.py`` sets ``TRITON_INTERPRET=1`` before triton is imported, runs every
case of :data:`CASES` (forward and every input gradient vs the reference, with NaN-filled,
guard-banded kernel outputs) plus ``torch.library.opcheck``, and prints one JSON line per check:
``{"id": ..., "ok": bool, "msg": str}``. ``test_neighborhood.py`` spawns it once and asserts each line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings

# (id, (H, W), kernel_size, dilation, dtype, head_dim, heads, rpb: None | "grad" | "const")
CASES = [
    ("fp32_12x12_k7_rpb", (12, 12), 7, 1, "float32", 16, 1, "grad"),
    ("fp32_9x11_k3x5_d2x1_rpb", (9, 11), (3, 5), (2, 1), "float32", 16, 2, "grad"),
    ("fp32_15x14_k13_const_rpb", (15, 14), 13, 1, "float32", 16, 1, "const"),
    ("fp16_13x10_k5x3_d2x3", (13, 10), (5, 3), (2, 3), "float16", 16, 2, None),
    ("fp16_10x9_k3_d3_hd24_rpb", (10, 9), 3, 3, "float16", 24, 1, "grad"),
    ("bf16_16x16_k7_rpb", (16, 16), 7, 1, "bfloat16", 16, 1, "grad"),
    ("bf16_11x12_k5_d2", (11, 12), 5, 2, "bfloat16", 32, 1, None),
]

GUARD = 37  # elements of NaN before and after every kernel output


def _run_case(case, torch, api, tri, assert_close):
    cid, (height, width), ks, dil, dtype_name, head_dim, heads, rpb_mode = case
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(hash(cid) % 2**31)
    shape = (1, height, width, heads, head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    rpb = None
    if rpb_mode is not None:
        rpb = torch.randn((heads, 2 * kh - 1, 2 * kw - 1), generator=gen).requires_grad_(rpb_mode == "grad")
    grad_out = torch.randn(shape, generator=gen).to(dtype)

    bufs = []

    def poisoned(shp, dt, device):
        n = math.prod(shp)
        buf = torch.full((n + 2 * GUARD,), float("nan"), dtype=dt, device=device)
        bufs.append((buf, n))
        return buf[GUARD : GUARD + n].view(shp)

    tri._empty = poisoned
    inputs = [q, k, v] + ([rpb] if rpb is not None and rpb.requires_grad else [])
    out = api.neighborhood_attention_2d(q, k, v, ks, dil, rpb=rpb, impl="triton")
    grads = torch.autograd.grad(out, inputs, grad_out)
    # the oracle: reference in float32 on the same (rounded) inputs
    ref_in = [x.detach().float().requires_grad_() for x in inputs]
    rpb_ref = None if rpb is None else (ref_in[3] if rpb.requires_grad else rpb.detach())
    ref = api.neighborhood_attention_2d(*ref_in[:3], ks, dil, rpb=rpb_ref, impl="reference")
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out.float())
    assert out.dtype == dtype, f"output dtype {out.dtype}"
    assert_close(out, ref, dtype, what="out")
    for name, g, rg in zip(("dq", "dk", "dv", "drpb"), grads, ref_grads):
        assert_close(g.float(), rg, dtype, grad=True, what=name)
    for i, (buf, n) in enumerate(bufs):
        head, tail = buf[:GUARD], buf[GUARD + n :]
        assert torch.isnan(head).all() and torch.isnan(tail).all(), f"kernel output #{i} written out of bounds"


def _opcheck(torch):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn((1, 6, 7, 1, 16), generator=gen).requires_grad_() for _ in range(3))
    rpb = torch.randn((1, 5, 5), generator=gen).requires_grad_()
    torch.library.opcheck(torch.ops.mixerzoo.na2d_fwd.default, (q, k, v, rpb, 3, 3, 2, 1, 0.3))


def main() -> int:
    os.environ["TRITON_INTERPRET"] = "1"
    # numpy overflow / invalid-value warnings inside the interpreter point at garbage (e.g. out-of-
    # range) reads that a later mask hides: make them failures
    warnings.simplefilter("error", RuntimeWarning)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from _tolerances import assert_close

    from mixerzoo.kernels.neighborhood import api
    from mixerzoo.kernels.neighborhood import triton as tri

    torch.manual_seed(0)
    default_empty = tri._empty
    only = set(sys.argv[1:])
    checks = [(c[0], lambda c=c: _run_case(c, torch, api, tri, assert_close)) for c in CASES]
    checks.append(("opcheck", lambda: _opcheck(torch)))
    for cid, fn in checks:
        if only and cid not in only:
            continue
        t0 = time.perf_counter()
        try:
            fn()
            res = {"id": cid, "ok": True, "msg": ""}
        except Exception as err:  # noqa: BLE001 - report every failure as a result line, keep going
            res = {"id": cid, "ok": False, "msg": f"{type(err).__name__}: {err}"}
        finally:
            tri._empty = default_empty
        res["seconds"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
