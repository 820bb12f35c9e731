"""Train-step throughput of the recipe (AdamW via timm, label-smoothing CE, optional bf16 autocast).

    python benchmarks/bench_train.py [--models test_poolformer poolformer_s12 resnet18_cbam vit_tiny_patch16_224]
                                     [--batch 32] [--size 0] [--steps 5] [--amp none|bf16] [--device auto]

``--size 0`` uses each model's pretrained-cfg input size. Prints the median img/s over ``steps`` timed steps
(after 2 warm-up steps) for each model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["test_poolformer", "poolformer_s12", "resnet18_cbam",
                                                   "vit_tiny_patch16_224"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    from mixerzoo.train import build_recipe
    from mixerzoo.train.finetune import prepare_model
    from mixerzoo.train.optim import create_criterion, create_optimizer

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"device {device}, batch {args.batch}, amp {args.amp}, torch threads {torch.get_num_threads()}")
    for name in args.models:
        recipe = build_recipe({"model": name, "data": "bench", "img_size": args.size or None, "mixup": 0,
                               "cutmix": 0, "amp": args.amp})
        model = prepare_model(recipe, num_classes=1000, device=device)
        size = model.pretrained_cfg["input_size"][-1]
        opt = create_optimizer(model, recipe)
        crit = create_criterion(recipe, None)
        x = torch.randn(args.batch, 3, size, size, device=device)
        y = torch.randint(0, 1000, (args.batch,), device=device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        times = []
        for i in range(args.steps + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                loss = crit(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        ips = args.batch / statistics.median(times)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"  {name:24s} {size:4d}px {params:7.2f}M params  {ips:9.1f} img/s")


if __name__ == "__main__":
    main()
