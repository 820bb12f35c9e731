"""Command line: ``mixerzoo bench`` and ``mixerzoo model-table`` (also ``python -m mixerzoo.bench``).

``register(subparsers)`` adds both sub-commands to the package CLI; each sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "register"]

_log = logging.getLogger("mixerzoo.bench")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="params, GMACs, throughput, latency and peak memory per model (vs timm resnet50)",
        description=(
            "Measure models: parameters, GMACs (multiply-accumulates, batch 1), forward or train-step latency and "
            "throughput (median of --runs after --warmup, alternating with the yardstick), the throughput ratio "
            "to the yardstick, and peak memory. Prints a table and writes CSV, JSON and PNG plots."
        ),
    )
    p.add_argument(
        "models", nargs="*", metavar="MODEL|PATTERN",
        help="names or fnmatch patterns (default: all models); 'timm:<name>' benches a timm model",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: each model's cfg size)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (train: autocast)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (the yardstick too)")
    p.add_argument("--train", action="store_true", help="time a training step (forward, CE loss, backward, SGD)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model (default 2)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model; the median is reported (default 5)")
    p.add_argument("--iters", type=int, default=1, help="steps per timed run (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the run")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time (default) or process CPU time / threads (steadier on a shared CPU)")  # fmt: skip
    p.add_argument("--autocast", action="store_true",
                   help="bfloat16/float16 inference under torch.autocast over fp32 weights (default: cast the model)")
    p.add_argument("--mfu", action="store_true",
                   help="add MFU: achieved FLOP/s (GMACs x 2 x img/s, x3 for --train) over a same-dtype square GEMM "
                   "timed alternately with each model")
    p.add_argument("--gemm-size", type=int, default=None,
                   help="side of the --mfu reference GEMM (default 2048 on CPU, 512 for CPU float16, 8192 on CUDA)")
    p.add_argument("--breakdown", action="store_true",
                   help="profile one step per model; share of self time per op type (gemm, attention, norm, copy, "
                   "elementwise, other)")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory (on CPU: one child process per model)")
    p.add_argument("--yardstick", default="timm:resnet50", help="reference model ('none': skip; default timm:resnet50)")
    p.add_argument("--out-dir", default="bench_results", help="where CSV/JSON/PNG files go (default ./bench_results)")
    p.add_argument("--stem", default=None, help="output file stem (default: bench-<mode>-<device>-<dtype>-b<batch>...)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--mixers", default=None, metavar="A[,B,C,D]",
                   help="model spec for every benched model: token mixers, one name or one per stage")
    p.add_argument("--mixer-options", default=None, metavar="OPTIONS",
                   help="JSON (an object, or one per stage), or key=value[,key=value] with ';' between stages")
    p.add_argument("--model-args", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                   help="architecture overrides of the family's config (values are JSON literals)")
    p.set_defaults(func=run_bench)


def _add_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model-table",
        help="the README model table: name, weights, params, GMACs, official top-1, CPU throughput ratio",
        description="Generate the README model table from the registry, the pretrained cfgs, the official figures "
        "and a bench run (--bench-json FILE from `mixerzoo bench`, or --run-bench to run one now).",
    )
    p.add_argument("models", nargs="*", metavar="MODEL|PATTERN", help="names or patterns (default: all models)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bench-json", default=None, help="a JSON file written by `mixerzoo bench` (its ratio column)")
    g.add_argument("--run-bench", action="store_true", help="run a CPU bench now (batch 8, fp32, default sizes)")
    p.add_argument("--threads", type=int, default=None, help="threads for --run-bench")
    p.add_argument("--output", default=None, help="write the markdown here (default: print it)")
    p.add_argument("--readme", default=None, help="rewrite this file between the model-table markers")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_model_table)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` and ``model-table`` sub-commands to a parser's sub-parsers."""
    _add_bench(subparsers)
    _add_table(subparsers)


def run_bench(args: argparse.Namespace) -> int:
    from mixerzoo.bench.measure import BenchConfig, bench_models, expand_models  # noqa: PLC0415
    from mixerzoo.bench.table import format_table, write_outputs  # noqa: PLC0415

    try:
        names = expand_models(args.models)
        cfg = BenchConfig(
            batch=args.batch, img_size=args.img_size, device=args.device, dtype=args.dtype, compile=args.compile,
            train=args.train, warmup=args.warmup, runs=args.runs, iters=args.iters, threads=args.threads,
            memory=not args.no_memory, yardstick=None if args.yardstick.lower() == "none" else args.yardstick,
            clock=args.clock, autocast=args.autocast, mfu=args.mfu, gemm_size=args.gemm_size,
            breakdown=args.breakdown, model_kwargs=_spec_kwargs(args, names),
        )  # fmt: skip
    except (ValueError, TypeError, RuntimeError) as err:
        sys.stderr.write(f"mixerzoo bench: {err}\n")
        return 2
    rows = bench_models(names, cfg, progress=False if args.quiet else None)
    files = write_outputs(rows, cfg, args.out_dir, stem=args.stem, plots=not args.no_plots)
    sys.stdout.write(format_table(rows) + "\n")
    sys.stdout.write("wrote: " + ", ".join(str(f) for f in files) + "\n")
    failed = [r for r in rows if r.status != "ok"]
    return 1 if rows and len(failed) == len(rows) else 0


def _spec_kwargs(args: argparse.Namespace, names: list[str]) -> dict[str, Any] | None:
    """The constructor kwargs of ``--mixers/--mixer-options/--model-args``, checked on the meta device against every
    model (a SpecError, one line naming the argument, before anything is timed)."""
    if args.mixers is None and args.mixer_options is None and not args.model_args:
        return None
    from mixerzoo.spec import ModelSpec  # noqa: PLC0415

    kwargs: dict[str, Any] = {}
    for name in names:
        arch = name[len("timm:"):] if name.startswith("timm:") else name
        spec = ModelSpec.parse(arch, args.mixers, args.mixer_options, args.model_args)
        spec.validate(img_size=args.img_size)
        kwargs = spec.kwargs()
    return kwargs


def run_model_table(args: argparse.Namespace) -> int:
    from mixerzoo.bench.measure import (  # noqa: PLC0415
        YARDSTICK,
        BenchConfig,
        bench_models,
        expand_models,
        profile_model,
    )
    from mixerzoo.bench.table import model_table, read_results, rewrite_readme  # noqa: PLC0415

    try:
        names = [n for n in expand_models(args.models) if not n.startswith("timm:")]
    except ValueError as err:
        sys.stderr.write(f"mixerzoo model-table: {err}\n")
        return 2
    bench = {}
    note = ""
    if args.run_bench:
        cfg = BenchConfig(batch=8, threads=args.threads, memory=False)
        rows = bench_models(names, cfg, progress=False if args.quiet else None)
        bench = {r.model: r for r in rows}
        note = f"CPU throughput: `mixerzoo bench` batch 8, fp32, {rows[0].threads if rows else '?'} threads, forward."
    elif args.bench_json:
        rows = read_results(args.bench_json)
        bench = {r.model: r for r in rows}
        if rows:
            r0 = rows[0]
            note = (
                f"CPU throughput: `mixerzoo bench` ({r0.mode}, {r0.device}, {r0.dtype}, batch {r0.batch}, "
                f"{r0.threads} threads)."
            )
    from tqdm.auto import tqdm  # noqa: PLC0415

    profiles = {}
    for name in tqdm(names, desc="count params/GMACs", unit="model", disable=True if args.quiet else None, leave=False):
        try:
            profiles[name] = profile_model(name)
        except Exception as err:  # noqa: BLE001 - a row with dashes, and a log line
            _log.warning("model-table: cannot count %s (%s: %s)", name, type(err).__name__, err)
    yard = YARDSTICK.removeprefix("timm:")
    table = model_table(names, profiles, bench, yardstick=yard, bench_note=note)
    if args.output:
        Path(args.output).write_text(table)
    if args.readme:
        try:
            changed = rewrite_readme(args.readme, table)
        except (ValueError, OSError) as err:
            sys.stderr.write(f"mixerzoo model-table: {err}\n")
            return 2
        sys.stderr.write(f"{args.readme}: {'updated' if changed else 'unchanged'}\n")
    if not args.output and not args.readme:
        sys.stdout.write(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mixerzoo.bench {bench,model-table} ...``"""
    parser = argparse.ArgumentParser(prog="python -m mixerzoo.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    return int(args.func(args))
