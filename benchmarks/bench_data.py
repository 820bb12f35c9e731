"""Data-pipeline throughput: albumentations (mixerzoo.train.data) vs torchvision v2, on the same decoded images.

    python benchmarks/bench_data.py [--n 64] [--size 224] [--src 500x375] [--repeats 3]

Both pipelines do the same work per image: random-resized crop to ``size``, horizontal flip, two random ops,
normalize, random erasing; inputs are decoded once (HWC uint8 numpy for albumentations, CHW uint8 tensors for
torchvision). Single process, single thread; prints the median images/s over ``repeats`` alternating runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _images(n: int, w: int, h: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, i * 7, axis=1) for i in range(n)]


def _albumentations(size: int):
    from mixerzoo.train.data import DataConfig, build_transform
    from mixerzoo.train.recipe import Recipe

    cfg = DataConfig(size, 0.875, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    t = build_transform(cfg, Recipe(aug_ops=2, aug_magnitude=9, reprob=0.25), train=True)
    return lambda img: t(image=img)["image"]


def _torchvision(size: int):
    import torch
    from torchvision.transforms import v2

    t = v2.Compose([
        v2.RandomResizedCrop(size, antialias=True, interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=9),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        v2.RandomErasing(p=0.25, value="random"),
    ])
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--src", default="500x375")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    w, h = (int(v) for v in args.src.split("x"))
    imgs = _images(args.n, w, h)
    tensors = [torch.from_numpy(i).permute(2, 0, 1).contiguous() for i in imgs]
    pipes = {"albumentations": (_albumentations(args.size), imgs), "torchvision.v2": (_torchvision(args.size), tensors)}
    for fn, data in pipes.values():  # warm-up
        for x in data[:4]:
            fn(x)
    rates: dict[str, list[float]] = {k: [] for k in pipes}
    for _ in range(args.repeats):
        for name, (fn, data) in pipes.items():
            t0 = time.perf_counter()
            for x in data:
                out = fn(x)
            rates[name].append(len(data) / (time.perf_counter() - t0))
            assert tuple(out.shape) == (3, args.size, args.size)
    print(f"{args.n} images {w}x{h} -> {args.size}, 1 thread, median of {args.repeats}:")
    for name, r in rates.items():
        print(f"  {name:16s} {statistics.median(r):8.1f} img/s  ({1000 / statistics.median(r):.2f} ms/img)")


if __name__ == "__main__":
    main()
