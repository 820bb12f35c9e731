"""mixerzoo.bench: parameters, GMACs, speed and memory of every model, and the README model table.

Command line: ``mixerzoo bench [MODEL|PATTERN ...]`` and ``mixerzoo model-table`` (or
``python -m mixerzoo.bench ...``). Python::

    from mixerzoo.bench import BenchConfig, bench_models, profile_model
    profile_model("poolformer_s12")            # Profile(params=11915176, flops=..., img_size=224, ...)
    rows = bench_models(["biformer_*"], BenchConfig(batch=8))
"""

from __future__ import annotations

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
from mixerzoo.bench.official import OFFICIAL, Official, official

__all__ = [
    "OFFICIAL",
    "YARDSTICK",
    "BenchConfig",
    "BenchResult",
    "Official",
    "Profile",
    "bench_models",
    "count_flops",
    "count_params",
    "expand_models",
    "official",
    "profile_model",
]
