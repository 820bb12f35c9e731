"""CPU forward throughput of the gated ResNets against timm's plain resnet50, in one run.

    .venv/bin/python benchmarks/bench_attn_resnet.py                      # fp32, batch 8, 224², 2 threads
    .venv/bin/python benchmarks/bench_attn_resnet.py --channels-last      # both memory formats? run twice
    .venv/bin/python benchmarks/bench_attn_resnet.py --official DIR ...   # also time official model code

``--official DIR`` (repeatable) adds the official ResNet-50 of a checkout that holds ``MODELS/`` — the
``Jongchan/attention-module`` one (``MODELS/model_resnet.py``, CBAM) or the ``LandskapeAI/triplet-attention``
one (``MODELS/resnet.py``, triplet). The official code is imported from that directory only; it is not part
of mixerzoo.

Every round times each model once, in a rotated order (warm-up first), and the script prints per-model
medians, images/s, and the ratio of each median to timm resnet50's median. Targets (fp32, 2 threads):
resnet50_cbam ≤ 1.15× and resnet50_triplet ≤ 1.35× the plain resnet50 time.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

import mixerzoo


def _official(root: str) -> dict[str, nn.Module]:
    """Official ResNet-50 models found under ``root/MODELS`` (random init, eval)."""
    for name in [m for m in sys.modules if m == "MODELS" or m.startswith("MODELS.")]:
        del sys.modules[name]  # both repositories call their package MODELS
    sys.path.insert(0, str(Path(root).resolve()))
    try:
        out = {}
        if (Path(root) / "MODELS" / "model_resnet.py").exists():
            mr = importlib.import_module("MODELS.model_resnet")
            out["official resnet50 CBAM"] = mr.ResidualNet("ImageNet", 50, 1000, "CBAM")
        if (Path(root) / "MODELS" / "resnet.py").exists():
            mr = importlib.import_module("MODELS.resnet")
            out["official resnet50 triplet"] = mr.ResidualNet("ImageNet", 50, 1000, "TripletAttention")
        if not out:
            raise SystemExit(f"--official {root!r}: no MODELS/model_resnet.py or MODELS/resnet.py there")
        return out
    finally:
        sys.path.pop(0)


def _time(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="run every model and input in channels_last")
    p.add_argument("--models", default="resnet50_cbam,resnet50_triplet", help="comma-separated mixerzoo names")
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared machine, best with --threads 1)",
    )
    p.add_argument("--official", action="append", default=[], metavar="DIR", help="checkout holding MODELS/")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"timm resnet50": timm.create_model("resnet50")}
    for name in args.models.split(","):
        models[name] = mixerzoo.create_model(name)
    for root in args.official:
        models.update(_official(root))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt)
    for m in models.values():
        m.eval().to(memory_format=fmt)

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    times: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    with torch.inference_mode():
        for name in names:  # warm-up (oneDNN primitive creation, allocator)
            models[name](x)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                times[name].append(_time(lambda m=models[name]: m(x), clock))

    base = statistics.median(times["timm resnet50"])
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.size}², fp32, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {args.rounds} rounds, {args.clock} clock (medians)"
    )
    print(f"{'model':30s} {args.clock + ' median s':>14s} {'min s':>8s} {'img/s':>8s} {'× resnet50':>11s}")
    for name in names:
        med = statistics.median(times[name])
        print(f"{name:30s} {med:14.3f} {min(times[name]):8.3f} {args.batch / med:8.1f} {med / base:11.2f}")


if __name__ == "__main__":
    main()
