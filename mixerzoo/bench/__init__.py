"""mixerzoo.bench: parameters, GMACs, speed and memory of every model, and the README model table.

Command line: ``mixerzoo bench [MODEL|PATTERN ...]`` and ``mixerzoo model-table`` (or
``python -m mixerzoo.bench ...``). Python::

    from mixerzoo.bench import BenchConfig, bench_models, profile_model
    profile_model("poolformer_s12")            # Profile(params=11915176, flops=..., img_size=224, ...)
    rows = bench_models(["biformer_*"], BenchConfig(batch=8))
    rows = bench_models(["nat_mini"], BenchConfig(dtype="bfloat16", autocast=True, mfu=True, breakdown=True))
    rows[1].mfu, rows[1].breakdown                 # 0.2, {"gemm": 0.5, "attention": 0.3, ...}

MFU (``--mfu``): achieved FLOP/s over a same-dtype GEMM timed in the same run (:mod:`mixerzoo.bench.mfu`).
Breakdown (``--breakdown``): profiled self time by op type (:mod:`mixerzoo.bench.breakdown`).
"""

from __future__ import annotations

from mixerzoo.bench.breakdown import BUCKETS, Breakdown, classify_op, op_breakdown
from mixerzoo.bench.measure import (
    YARDSTICK,
    BenchConfig,
    BenchResult,
    Profile,
    bench_models,
    count_flops,
    count_params,
    expand_models,
    profile_model,
)
from mixerzoo.bench.mfu import TRAIN_FLOP_FACTOR, GemmStep, default_gemm_size
from mixerzoo.bench.official import OFFICIAL, Official, official

__all__ = [
    "BUCKETS",
    "OFFICIAL",
    "TRAIN_FLOP_FACTOR",
    "YARDSTICK",
    "BenchConfig",
    "BenchResult",
    "Breakdown",
    "GemmStep",
    "Official",
    "Profile",
    "bench_models",
    "classify_op",
    "count_flops",
    "count_params",
    "default_gemm_size",
    "expand_models",
    "official",
    "op_breakdown",
    "profile_model",
]
