"""AOT-compile every neighborhood-attention Triton kernel with its launch configs for sm_80 and sm_90
(no GPU needed): compile succeeds, shared memory fits, no spills, tensor-core instructions present.

The config functions are the ones the launcher uses; the parameter grid covers every distinct config
they produce (query tile 8x8 or 4x8, key-block width 16 or 32, BLOCK_D 32 to 128) and every input
dtype (fp16, bf16, fp32 via tf32).
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from _aot import SMEM_LIMIT, aot_compile

from mixerzoo.kernels.neighborhood import triton as na_triton

PTR_FP32 = {"RPB", "LSE", "DELTA", "DS"}
PTR_DATA = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}

# kernel size, head_dim, dtype (tl name), dot precision
PROBLEMS = [
    ((7, 7), 32, "fp16", "ieee"),  # NAT: 8x8 tiles, 16-wide key blocks
    ((13, 13), 128, "bf16", "ieee"),  # large kernel, 32-wide key blocks, head_dim 128 config
    ((3, 7), 64, "fp32", "tf32"),  # fp32 inputs use tf32 tensor cores when allowed (4x8 tile)
    ((5, 5), 32, "fp32", "tf32"),  # fp32, 8x8 tile
]
ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def _kernels():
    from mixerzoo.kernels.neighborhood import _triton_kernels as k

    return {
        "fwd": (k._na2d_fwd_kernel, na_triton.fwd_config),
        "dq": (k._na2d_bwd_dq_kernel, na_triton.bwd_dq_config),
        "dkdv": (k._na2d_bwd_dkdv_kernel, na_triton.bwd_dkdv_config),
    }


def _signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in PTR_DATA:
            sig[name] = "*" + dtype
        elif name in PTR_FP32:
            sig[name] = "*fp32"
        elif name in ("qk_scale", "scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: f"k{p[0][0]}x{p[0][1]}_d{p[1]}_{p[2]}")
@pytest.mark.parametrize("kernel", ["fwd", "dq", "dkdv"])
def test_aot_compile(kernel, problem, arch):
    fn, config = _kernels()[kernel]
    ks, head_dim, dtype, prec = problem
    cfg = dict(config(ks, head_dim, ELEM_BYTES[dtype]))
    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    # HAS_RPB (and STORE_DS for dq) on: the superset of the code paths
    cfg.update(
        KH=ks[0],
        KW=ks[1],
        HEAD_DIM=head_dim,
        BLOCK_D=na_triton._block_d(head_dim),
        HAS_RPB=True,
        UPCAST=False,
        PREC=prec,
    )
    if kernel == "dq":
        cfg["STORE_DS"] = True
    res = aot_compile(fn, _signature(fn, dtype, cfg), cfg, arch=arch, num_warps=num_warps, num_stages=num_stages)
    assert res.shared <= SMEM_LIMIT[arch], f"{res.shared} B shared > {SMEM_LIMIT[arch]} on sm_{arch}"
    assert res.spill_bytes == 0, f"spills: {res.resource_usage}"
    assert res.has_mma, "no mma.sync / wgmma in the PTX"
    if arch == 90:
        assert res.has_wgmma or "mma.sync" in res.ptx
