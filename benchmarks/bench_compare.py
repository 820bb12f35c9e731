"""A real ``mixerzoo compare``: eight token mixers in one small PoolFormer host on the procedural Pathfinder task.

    .venv/bin/python benchmarks/bench_compare.py                 # about 20 minutes on a 2-core CPU
    .venv/bin/python benchmarks/bench_compare.py --quick         # a few minutes: smoke run of the same code path

Mixers: pooling (PoolFormer), attention (ViT), window (Swin), neighborhood (NAT), bra (BiFormer), focused_linear
(FLatten), hilo (LITv2) and ``fourier``, a third-party mixer defined here and registered in this process (global
mixing by the real part of a 2-D FFT, after FNet, Lee-Thorp et al., arXiv:2105.03824), standing in for a plugin
distribution. Every spec gets the same recipe, seed, data order and a wall-clock budget (``--minutes`` each).

Prints the table (``<output>/results.md``) and writes the CSV/JSON and the plots next to it; the machine and the
date are written to ``<output>/machine.txt``. Use ``--resume``-free reruns of the same command to continue a killed
run (the comparison resumes by itself).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch
from torch import nn

from mixerzoo.cli import main as mixerzoo_main
from mixerzoo.plugins import register_mixer

MIXERS = ("pooling", "attention", "window", "neighborhood", "bra", "focused_linear", "hilo", "fourier")
# the host's stages are 16/24/32/48 channels wide (the 32-channel head default of NAT/BiFormer does not divide
# them) and 8/4/2/1 tokens high at 32 px
OPTIONS = {"neighborhood": {"head_dim": 8, "kernel_size": 3, "small_input": "pad_mask"},
           "bra": {"head_dim": 8, "n_win": 2, "topk": 2}, "window": {"window_size": 4}}


class FourierMixer(nn.Module):
    """Parameter-free global token mixing: ``Re(FFT2(x))`` over the spatial axes (FNet's mixing on a grid)."""

    layout = "nchw"
    kind = "mixer"

    def __init__(self, dim: int, *, num_heads: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return torch.fft.fft2(x.float(), dim=(-2, -1), norm="ortho").real.to(x.dtype) * (1.0 / max(h * w, 1) ** 0.25)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/bench_compare", help="output folder [default: runs/bench_compare]")
    ap.add_argument("--quick", action="store_true", help="tiny data and one epoch per spec (a smoke run)")
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget per spec [default: 2.0]")
    ap.add_argument("--size", type=int, default=32, choices=(32, 64), help="Pathfinder image side [default: 32]")
    ap.add_argument("--n", type=int, default=6000, help="training images [default: 6000]")
    ap.add_argument("--knobs", default="distractors=1&gap=1",
                    help="Pathfinder difficulty knobs as query options [default: distractors=1&gap=1, an easier "
                         "setting than the generator's default, so that a 2-minute budget can learn it]")
    args = ap.parse_args(argv)
    register_mixer("fourier", FourierMixer, override=True)
    n, val = (256, 128) if args.quick else (args.n, max(500, args.n // 6))
    out = Path(args.output + ("_quick" if args.quick and args.output == "runs/bench_compare" else ""))
    data = f"pathfinder:{args.size}?n={n}&val={val}&seed=0" + (f"&{args.knobs}" if args.knobs else "")
    cmd = ["compare", "test_poolformer", "--mixers", ",".join(MIXERS), "--mixer-options", json.dumps(OPTIONS),
           "--data", data, "--img-size", str(args.size),
           "--batch-size", "64", "--lr", "2e-3", "--weight-decay", "0.05", "--workers", "0", "--no-save-model",
           "--seed", "0", "--bench-iters", "3" if args.quick else "10", "--output", str(out)]
    cmd += ["--epochs", "1"] if args.quick else ["--minutes", str(args.minutes), "--warmup-epochs", "1"]
    print("mixerzoo " + " ".join(f"'{c}'" if any(ch in c for ch in "{}?&\" ") else c for c in cmd), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "machine.txt").write_text(machine() + "\n")
    rc = mixerzoo_main(cmd)
    print(f"machine: {machine()}")
    return 0 if rc in (0, 1) else rc


if __name__ == "__main__":
    sys.exit(main())
