"""``mixerzoo compare HOST --mixers A,B,C [training flags]``: token mixers side by side under one recipe.

Every spec trains with the same recipe, seed, data order and budget; the flags are those of ``mixerzoo train``
(``--data``, ``--epochs``, ``--img-size``, ``--batch-size``, ``--lr``, ``--model-args`` for every spec, ...), plus
the comparison's own (``--mixers``, ``--specs``, ``--mixer-options``, ``--minutes``, ``--output``, ...).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import types
from pathlib import Path
from typing import Any

from mixerzoo.train._cli import _add_recipe_flags, _one_line_usage_error, _overrides, one_line_error
from mixerzoo.train.recipe import RecipeError, recipe_fields

__all__ = ["register", "run_compare"]

_HELP = "train several mixers (or model specs) with one recipe and compare accuracy, cost, speed and memory"
_OWN = {"model", "mixers", "mixer_options", "output", "resume", "overwrite"}
_EPILOG = ("Writes <output>/results.md, results.csv, results.json, acc_vs_gmacs.png, acc_vs_throughput.png and "
           "learning_curves.png; each spec trains in <output>/specs/<i>-<label>/run. Run the same command again "
           "to resume a killed comparison: finished specs are kept, an interrupted one continues from its "
           "checkpoint. Data 'pathfinder:32' / 'pathfinder:64?n=4000&gap=3' is a built-in procedural task "
           "(mixerzoo.compare.pathfinder).")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help=_HELP, description=_HELP, epilog=_EPILOG)
    p.error = types.MethodType(_one_line_usage_error, p)  # type: ignore[method-assign]
    p.add_argument("host", nargs="?", default=None, metavar="HOST",
                   help="the model whose mixers are swapped (e.g. poolformer_s12, test_poolformer)")
    p.add_argument("--mixers", default=None, metavar="A,B,C",
                   help="one spec per comma item; '/' separates per-stage mixers inside one item "
                        "(pooling,attention,pooling/pooling/attention/attention)")
    p.add_argument("--specs", default=None, metavar="YAML",
                   help="a YAML list of specs: mixer names for HOST, or mappings with model, mixers, "
                        "mixer_options, model_args, label (other hosts too); after those of --mixers")
    p.add_argument("--mixer-options", dest="mixer_options_map", default=None, metavar="JSON",
                   help="options per mixer name for every spec that uses it, e.g. '{\"window\": {\"window_size\": 4}}'")
    p.add_argument("--output", dest="compare_output", default=None, metavar="DIR",
                   help="output directory (default: runs/compare-<HOST>)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget per spec instead of --epochs: each spec gets the epochs its measured "
                        "training throughput fits in this time (at least 1)")
    p.add_argument("--bench-iters", type=int, default=5, help="timed steps for the throughput columns [default: 5]")
    p.add_argument("--bench-batch", type=int, default=None,
                   help="batch of the throughput/memory measurement [default: the training batch, at most 64]")
    p.add_argument("--in-process", action="store_true",
                   help="train the specs in this process (no per-spec memory figure isolation; for debugging)")
    names = {f.name for f in recipe_fields()} - _OWN
    _add_recipe_flags(p, only=names)
    p.set_defaults(func=run_compare, command="compare")


def _fail(msg: str) -> int:
    sys.stderr.write(f"mixerzoo compare: error: {msg}\n")
    return 2


def run_compare(args: argparse.Namespace) -> int:
    """Execute a parsed ``compare`` command: 0 when every spec trained, 1 when some failed, 2 on bad input."""
    from . import run

    quiet = bool(getattr(args, "quiet", False))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.mixers is None and args.specs is None:
            raise RecipeError("compare needs --mixers A,B,C (with HOST) or --specs FILE.yaml")
        if args.mixers is not None and args.host is None:
            raise RecipeError(f"--mixers={args.mixers!r} needs a HOST model, e.g. mixerzoo compare test_poolformer "
                              f"--mixers {args.mixers}")
        if args.minutes is not None and (not math.isfinite(args.minutes) or args.minutes <= 0):
            raise RecipeError(f"--minutes must be > 0, got {args.minutes!r}")
        if args.bench_iters < 1:
            raise RecipeError(f"--bench-iters must be >= 1, got {args.bench_iters!r}")
        if args.bench_batch is not None and args.bench_batch < 1:
            raise RecipeError(f"--bench-batch must be >= 1, got {args.bench_batch!r}")
        overrides = _overrides(args)
        if args.minutes is not None and "epochs" in overrides:
            raise RecipeError("--epochs and --minutes exclude each other: the budget is one or the other")
        model_args = overrides.pop("model_args", None)
        if model_args is not None:
            from mixerzoo.spec import parse_model_args

            model_args = parse_model_args(model_args)
        opts = run.parse_mixer_options_map(args.mixer_options_map)
        specs: list[Any] = []
        if args.mixers is not None:
            items = [m.strip() for m in args.mixers.split(",")]
            parsed = run.parse_spec_list(args.host, args.mixers, mixer_options=opts, model_args=model_args)
            specs += list(zip(parsed, items))  # the row label is the --mixers item
        if args.specs is not None:
            specs += run.load_specs_file(args.specs, args.host, mixer_options=opts, model_args=model_args)
        output = Path(args.compare_output or Path("runs") / f"compare-{(args.host or 'specs').replace('/', '_')}")
        if output.exists() and not output.is_dir():
            raise RecipeError(f"--output {str(output)!r} exists and is not a directory")
        jobs = run.make_jobs(specs, overrides, output, host=args.host, config=args.config, minutes=args.minutes,
                             bench_iters=args.bench_iters, bench_batch=args.bench_batch)
        invalid = run.check_jobs(jobs)
        if len(invalid) == len(jobs):
            first = jobs[0]
            raise RecipeError(f"spec {first.label!r}: {invalid[first.index]}" if len(jobs) == 1 else
                              "no spec can be built: " + "; ".join(f"{j.label!r}: {invalid[j.index]}" for j in jobs))
        for j in jobs:
            if j.index in invalid:
                sys.stderr.write(f"mixerzoo compare: spec {j.label!r} skipped: {invalid[j.index]}\n")
        rows = run.compare(jobs, output, invalid=invalid, progress=not quiet, isolate=not args.in_process)
    except Exception as e:  # noqa: BLE001 - the known one-line kinds are answered, the rest keep their traceback
        msg = one_line_error(e)
        if msg is None:
            raise
        return _fail(msg)
    sys.stdout.write(run.markdown_table(rows))
    sys.stdout.write(f"\nwritten to {output}/ (results.md, results.csv, results.json, plots)\n")
    sys.stdout.flush()
    return 0 if all(r.get("status") == "ok" for r in rows) else 1
