"""Spine benchmark: CPU forward throughput, batch 8, 224², fp32, every model against timm's resnet50 in the same
run (alternating, medians), printed as ratios, plus the spine's targets:

* vit_small_patch16_224 ≥ timm's vit_small_patch16_224
* poolformer_s12 ≥ 1.1× timm's poolformer_s12
* resnet50_cbam time ≤ 1.15× resnet50's; resnet50_triplet time ≤ 1.35× resnet50's

Run: ``.venv/bin/python benchmarks/bench_spine.py [--reps 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import forward_fn, time_alternating  # noqa: E402

import mixerzoo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    models = {
        "timm:resnet50": timm.create_model("resnet50"),
        "timm:vit_small_patch16_224": timm.create_model("vit_small_patch16_224"),
        "mz:vit_small_patch16_224": mixerzoo.create_model("vit_small_patch16_224"),
        "timm:poolformer_s12": timm.create_model("poolformer_s12"),
        "mz:poolformer_s12": mixerzoo.create_model("poolformer_s12"),
    }
    for name in ("resnet50_cbam", "resnet50_triplet"):
        if name in mixerzoo.list_models():
            models[f"mz:{name}"] = mixerzoo.create_model(name)
    t = time_alternating({k: forward_fn(m, x) for k, m in models.items()}, reps=args.reps)
    base = t["timm:resnet50"]
    print(f"CPU forward, batch {args.batch}, {args.img_size}², fp32, {torch.get_num_threads()} threads, "
          f"median of {args.reps} alternating runs")  # fmt: skip
    print(f"{'model':<30} {'ms/batch':>10} {'img/s':>8} {'× resnet50 throughput':>22}")
    for k, s in t.items():
        print(f"{k:<30} {s * 1e3:>10.1f} {args.batch / s:>8.1f} {base / s:>22.2f}")
    print("\ntargets:")
    r = t["timm:vit_small_patch16_224"] / t["mz:vit_small_patch16_224"]
    print(f"  vit_small: mz / timm throughput = {r:.2f} (target ≥ 1.00)")
    r = t["timm:poolformer_s12"] / t["mz:poolformer_s12"]
    print(f"  poolformer_s12: mz / timm throughput = {r:.2f} (target ≥ 1.10)")
    for name, target in (("resnet50_cbam", 1.15), ("resnet50_triplet", 1.35)):
        if f"mz:{name}" in t:
            print(f"  {name}: time / resnet50 time = {t[f'mz:{name}'] / base:.2f} (target ≤ {target:.2f})")


if __name__ == "__main__":
    main()
