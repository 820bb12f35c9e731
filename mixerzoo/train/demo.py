"""The end-to-end demo: train a small mixerzoo backbone on the bundled digits, save it as a hub folder, reload it
with ``mixerzoo.create_model("local-dir:...", pretrained=True)`` and report held-out accuracy. No download.

    python -m mixerzoo.train.demo [--model poolformer_s12] [--epochs 15] [--output runs/demo] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .recipe import RecipeError, build_recipe

__all__ = ["DEMO_RECIPE", "main", "run_demo"]

# Tuned for 2 CPU cores: PoolFormer-S12 at 16 px (the digits are 8x8), short cosine schedule, light augmentation.
DEMO_RECIPE: dict[str, Any] = {
    "model": "poolformer_s12",
    "data": "digits",
    "img_size": 16,
    "epochs": 15,
    "batch_size": 64,
    "lr": 2e-3,
    "warmup_epochs": 1.0,
    "drop_path": 0.0,
    "workers": 1,
    "seed": 0,
}


def run_demo(output: str | Path = "runs/demo", *, quiet: bool = False, **overrides: Any) -> dict[str, Any]:
    """Train, save, reload, evaluate. Returns ``{"top1", "train_top1", "seconds", "model_dir", "summary"}``."""
    import mixerzoo

    from .data import ImageDataset, build_loader, build_transform, open_sources, resolve_data_config
    from .loop import evaluate, fit

    t0 = time.perf_counter()
    # the demo owns its output folder: a re-run replaces the previous demo run (only the run's own files)
    recipe = build_recipe({**DEMO_RECIPE, "output": str(output), "quiet": quiet, "overwrite": True, **overrides})
    result = fit(recipe)
    if result.model_dir is None:
        raise RecipeError("demo: the model was not saved (save_model is off)")
    model = mixerzoo.create_model(f"local-dir:{Path(result.model_dir).resolve()}", pretrained=True)
    model.eval()
    cfg = resolve_data_config(model, build_recipe({"model": recipe.model, "img_size": None, "crop_pct": None,
                                                    "data": "digits"}))
    _, test = open_sources("digits", digits_size=cfg.img_size)
    loader = build_loader(ImageDataset(test, build_transform(cfg, train=False)), batch_size=128, train=False)
    res = evaluate(model, loader, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    return {"top1": res["top1"], "top5": res["top5"], "count": res["count"], "train_top1": result.top1,
            "seconds": seconds, "model_dir": str(result.model_dir), "summary": result.summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixerzoo.train.demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEMO_RECIPE["model"], help="mixerzoo model name [default: %(default)s]")
    p.add_argument("--epochs", type=int, default=DEMO_RECIPE["epochs"], help="[default: %(default)s]")
    p.add_argument("--output", default="runs/demo", help="output directory [default: %(default)s]")
    p.add_argument("--quiet", action="store_true", help="only the final line")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        out = run_demo(args.output, quiet=args.quiet, model=args.model, epochs=args.epochs)
    except RecipeError as e:
        sys.stderr.write(f"demo: error: {e}\n")
        return 2
    if not args.quiet:
        sys.stdout.write(out["summary"] + "\n")
    sys.stdout.write(
        f"reloaded {out['model_dir']} with mixerzoo.create_model('local-dir:...', pretrained=True): "
        f"held-out accuracy {out['top1']:.2f}% on {out['count']} digits test images "
        f"(total {out['seconds']:.0f}s)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
