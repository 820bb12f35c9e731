"""Ahead-of-time compile every Triton kernel of ``routed_attention`` and ``linear_attention`` for sm_80/sm_90.

Asserts per (kernel, launch config, dtype, arch): the compile succeeds, dynamic shared memory fits the arch,
nothing spills (cuobjdump STACK/LOCAL = 0), and kernels with matmuls lower them to tensor-core instructions
(``mma.sync`` on sm_80, ``mma``/``wgmma`` on sm_90). Also checks that the registered ops propagate shapes on the
meta device (the fake implementations that torch.compile uses).

Runs in one subprocess without ``TRITON_INTERPRET`` (interpreted kernels cannot be AOT-compiled). By default it
compiles the production configs (BiFormer/FLatten head dim 32) plus the largest tiles (head dim 128) of every
kernel in bf16; ``MIXERZOO_AOT_FULL=1`` compiles every config ``launch_config`` can produce for fp16, bf16
and fp32 (a few minutes). Compiled kernels land in Triton's cache, so re-runs are fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

FULL = os.environ.get("MIXERZOO_AOT_FULL", "0") == "1"
ARCHS = (80, 90)
_TY = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}

# arg-name -> triton type; data pointers ("*DT") take the tested dtype
ROUTED_ARGS = {
    "Q": "*DT", "K": "*DT", "V": "*DT", "O": "*DT", "DO": "*DT", "DQ": "*DT", "DK": "*DT", "DV_OUT": "*DT",
    "IDX": "*i64", "QLIST": "*i32", "OFFS": "*i32", "MASK": "*u8", "LSE": "*fp32", "DELTA": "*fp32", "scale": "fp32",
}
LINEAR_ARGS = {
    "Q": "*DT", "K": "*DT", "V": "*DT", "O": "*DT", "DO": "*DT", "X": "*DT", "DX": "*DT", "DV_OUT": "*DT",
    "STATS": "*fp32", "WS": "*fp32", "WSZ": "*fp32", "S": "*fp32", "Z": "*fp32", "DEN": "*fp32", "GS": "*fp32",
    "GZ": "*fp32", "GPHI": "*fp32", "FEPS": "fp32", "P": "fp32", "EPS": "fp32", "INV_M": "fp32",
}


def _cases() -> list[tuple[str, str, tuple, str, int]]:
    """(op, kernel name, config key, dtype, arch)."""
    dtypes = ("float16", "bfloat16", "float32") if FULL else ("bfloat16",)
    routed_cfgs = [(t, d) for t in (16, 64) for d in (16, 32, 64, 128)] if FULL else [(16, 32), (64, 32), (64, 128)]
    linear_cfgs = [16, 32, 64] if FULL else [32, 64]
    cases = []
    for kern in ("fwd", "bwd_dq", "bwd_dkdv"):
        for cfg in routed_cfgs:
            for dt in dtypes:
                if dt == "float32" and cfg[1] > 32:  # is_supported declines fp32 head dims > 32
                    continue
                cases += [("routed", kern, cfg, dt, a) for a in ARCHS]
    for kern in ("stats", "state", "fwd", "bwd_q", "bwd_kv", "bwd_feat"):
        for d in linear_cfgs:
            for dt in dtypes:
                if dt == "float32" and d > 32:
                    continue
                cases += [("linear", kern, (d,), dt, a) for a in ARCHS]
    return cases


def _case_id(case: tuple) -> str:
    op, kern, cfg, dt, arch = case
    return f"{op}-{kern}-{'x'.join(map(str, cfg))}-{_TY[dt]}-sm{arch}"


def _signature(fn, table: dict[str, str], dt: str, constexprs: dict) -> dict[str, str]:  # noqa: ANN001
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = table.get(name, "i32").replace("DT", _TY[dt])
    return sig


def _worker() -> None:
    import torch  # noqa: PLC0415
    from _aot import SMEM_LIMIT, aot_compile  # noqa: PLC0415

    from mixerzoo.kernels.linear import triton as lt  # noqa: PLC0415
    from mixerzoo.kernels.routed import triton as rt  # noqa: PLC0415

    results: dict[str, dict] = {}
    for case in _cases():
        op, kern, cfg, dt, arch = case
        try:
            if op == "routed":
                fn = getattr(rt, f"_routed_attention_{kern}_kernel")
                lc = rt.launch_config(cfg[0], cfg[1], cfg[1], 4 if dt == "float32" else 2)
                ce = {k: v for k, v in lc.items() if k.startswith("BLOCK")}
                ce.update(HAS_MASK=True, UPCAST=False, DOT_PREC="ieee")  # what the launcher passes (allow_tf32 off)
                table, has_dot = ROUTED_ARGS, True
            else:
                fn = getattr(lt, f"_linear_attention_{kern}_kernel")
                lc = lt.launch_config(cfg[0], cfg[0], 4 if dt == "float32" else 2)
                elementwise = kern in ("stats", "bwd_feat")
                ce = {"BLOCK_L": lc["BLOCK_LE" if elementwise else "BLOCK_L"], "BLOCK_D": lc["BLOCK_D"], "P_IS_3": False}
                if elementwise:
                    lc = {**lc, "num_warps": 4}
                else:
                    ce.update(BLOCK_DV=lc["BLOCK_DV"], KERNEL=3, DOT_PREC="ieee" if dt == "float32" else "tf32")
                if kern in ("state", "bwd_q"):
                    ce["CHUNK"] = lc["BLOCK_L"] * lt.CHUNK_TILES
                table, has_dot = LINEAR_ARGS, kern not in ("stats", "bwd_feat")
            ce = {k: v for k, v in ce.items() if k in fn.arg_names}
            r = aot_compile(
                fn, _signature(fn, table, dt, ce), ce, arch=arch, num_warps=lc["num_warps"], num_stages=lc["num_stages"]
            )
            problems = []
            if r.shared > SMEM_LIMIT[arch]:
                problems.append(f"shared {r.shared} > {SMEM_LIMIT[arch]}")
            if r.spill_bytes:
                problems.append(f"spills: stack {r.stack_bytes} B, local {r.local_bytes} B")
            if has_dot and dt != "float32" and not r.has_mma:
                problems.append("no mma/wgmma in the PTX")
            results[_case_id(case)] = {
                "ok": not problems, "problems": problems, "shared": r.shared, "regs": r.registers, "mma": r.has_mma,
                "wgmma": r.has_wgmma,
            }
        except Exception as err:  # compile failure: reported to the parent test
            results[_case_id(case)] = {"ok": False, "problems": [f"{type(err).__name__}: {err}"[:2000]]}

    # meta / fake propagation of the registered ops (what torch.compile traces)
    try:
        meta = {"device": "meta", "dtype": torch.bfloat16}
        q = torch.empty(2, 9, 16, 4, 32, **meta)
        idx = torch.empty(2, 1, 9, 4, dtype=torch.long, device="meta")
        out, lse = torch.ops.mixerzoo.routed_attention_fwd(q, q, q, idx, None, 0.1)
        assert out.shape == q.shape and lse.shape == (2, 4, 9, 16) and lse.dtype == torch.float32
        dq, dk, dv = torch.ops.mixerzoo.routed_attention_bwd(out, q, q, q, out, lse, idx, None, 0.1)
        assert dq.shape == dk.shape == dv.shape == q.shape
        ql = torch.empty(2, 50, 4, 32, **meta)
        o, *saved = torch.ops.mixerzoo.linear_attention_fwd(ql, ql, ql, 3, 3.0, 1e-6, 1e-6)
        assert o.shape == ql.shape and o.dtype == ql.dtype
        grads = torch.ops.mixerzoo.linear_attention_bwd(o, ql, ql, ql, o, *saved, 3, 3.0, 1e-6)
        assert all(g.shape == ql.shape for g in grads)
        results["meta"] = {"ok": True, "problems": []}
    except Exception as err:
        results["meta"] = {"ok": False, "problems": [f"{type(err).__name__}: {err}"]}
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def aot_results() -> dict[str, dict]:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__, "--worker"], capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"worker failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.mark.parametrize("case", [_case_id(c) for c in _cases()] + ["meta"])
def test_aot(aot_results: dict[str, dict], case: str) -> None:
    res = aot_results[case]
    assert res["ok"], f"{case}: {res['problems']}"


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker()
