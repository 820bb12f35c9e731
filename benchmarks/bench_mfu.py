"""MFU of every family: fp32 inference, bf16-autocast inference and the fp32 training step, as a share of a
same-dtype GEMM timed in the same run, with the per-op breakdown of where the time goes.

MFU = achieved FLOP/s / GEMM FLOP/s, where the achieved FLOP/s is the project's own forward count
(``mixerzoo.bench.profile_model``: GMACs x 2) x images/s, times 3 for a training step (forward + backward,
the usual MFU convention), and the GEMM is a square ``torch.mm`` of the same dtype (2048^3 on CPU) timed in
alternation with the model (``mixerzoo bench --mfu``); both are medians of ``--rounds`` alternating runs.
bf16 inference runs under ``torch.autocast`` over the fp32 weights (how a CPU user serves a checkpoint); its
GEMM is a native bf16 GEMM. The training step is forward, cross-entropy, backward and an SGD update. The
breakdown profiles one more step per mode and buckets its self time by op type (``mixerzoo bench
--breakdown``: gemm, attention kernel, norm, copies/permutes, element-wise, other) and names the largest op
outside the GEMMs.

Each model runs in a fresh interpreter (``--in-process``: all in this one), so that allocator state left by
one model does not change the next one's times; inside it the modes run fp32, bf16, then train.

    .venv/bin/python benchmarks/bench_mfu.py                                   # every family, batch 8, 224², 2 threads
    .venv/bin/python benchmarks/bench_mfu.py --models nat_mini biformer_tiny --rounds 7
    .venv/bin/python benchmarks/bench_mfu.py --markdown > perf.md              # the README's performance section
    .venv/bin/python benchmarks/bench_mfu.py --quick --models test_vit         # tiny shapes, 1 round: a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# one representative variant per family, timm's resnet50 as the dense reference
MODELS = (
    "timm:resnet50",
    "vit_small_patch16_224",
    "poolformer_s12",
    "resnet50_cbam",
    "biformer_tiny",
    "biformer_stl",
    "nat_mini",
    "dinat_mini",
    "nat_isotropic_small",
    "litv2_small",
    "flatten_swin_tiny",
    "flatten_pvt_tiny",
    "flatten_pvt_v2_b0",
    "flatten_cswin_tiny",
)
# mode -> (label, dtype, train)
MODES: dict[str, tuple[str, str, bool]] = {
    "fp32": ("fp32 infer", "float32", False),
    "bf16": ("bf16-autocast infer", "bfloat16", False),
    "train": ("fp32 train step", "float32", True),
}
# issue goals (fractions of the same-run GEMM rate; bf16 also at least this many times its own fp32 speed)
GOALS = {"fp32": 0.75, "bf16": 0.45, "train": 0.65}
SPEEDUP_GOAL = 1.8
QUICK = {"batch": 2, "img_size": 96, "rounds": 1, "warmup": 1, "gemm_size": 256}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_mfu.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="models or patterns ('timm:<name>' for timm; default: one per family)")  # fmt: skip
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="default: all three")
    p.add_argument(
        "--rounds", type=int, default=None, help="timed runs per mode, alternating with the GEMM (default 5)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per mode (default 2)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8)")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default 224)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--gemm-size", type=int, default=None, help="side of the reference GEMM (default 2048 on CPU)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the profiled per-op breakdown")
    p.add_argument("--markdown", action="store_true", help="print markdown (the README's performance section)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the raw rows as JSON")
    p.add_argument("--in-process", action="store_true", help="run every model in this interpreter")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: batch 2, 96², GEMM 256, 1 round, 1 warm-up, in-process (explicit flags win)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


@dataclasses.dataclass(frozen=True)
class Settings:
    batch: int
    img_size: int
    rounds: int
    warmup: int
    threads: int
    device: str
    gemm_size: int | None
    breakdown: bool
    modes: tuple[str, ...]


def _settings(args: argparse.Namespace) -> Settings:
    q = QUICK if args.quick else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else q.get(name, default)

    s = Settings(
        batch=pick("batch", 8), img_size=pick("img_size", 224), rounds=pick("rounds", 5), warmup=pick("warmup", 2),
        threads=args.threads, device=args.device, gemm_size=pick("gemm_size", None), breakdown=not args.no_breakdown,
        modes=tuple(dict.fromkeys(args.modes)),
    )  # fmt: skip
    for name in ("batch", "img_size", "rounds", "warmup", "threads"):
        if getattr(s, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    if s.gemm_size is not None and s.gemm_size < 1:
        raise ValueError(f"--gemm-size must be >= 1, got {s.gemm_size}")
    return s


# -------------------------------------------------------------------------------------- measuring
def run_model(name: str, s: Settings) -> dict[str, Any]:
    """All modes of one model in this interpreter: ``{mode: BenchResult dict}``."""
    import torch  # noqa: PLC0415

    from mixerzoo.bench import BenchConfig, bench_models  # noqa: PLC0415

    torch.set_num_threads(s.threads)
    out: dict[str, Any] = {"model": name, "modes": {}}
    for mode in s.modes:
        _, dtype, train = MODES[mode]
        cfg = BenchConfig(
            batch=s.batch, img_size=s.img_size, device=s.device, dtype=dtype, train=train, autocast=True,
            warmup=s.warmup, runs=s.rounds, threads=s.threads, memory=False, yardstick=None, mfu=True,
            gemm_size=s.gemm_size, breakdown=s.breakdown,
        )  # fmt: skip
        (row,) = bench_models([name], cfg, progress=False)
        out["modes"][mode] = row.to_dict()
    return out


def _run_child(name: str, s: Settings, argv: Sequence[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"model": name, "modes": {}, "error": tail[0][:300]}
    return json.loads(lines[-1])


# -------------------------------------------------------------------------------------- reporting
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _mark(text: str, missed: bool, markdown: bool) -> str:
    if not missed or text == "–":
        return text
    return f"**{text}**" if markdown else f"{text}*"


def _row_of(result: dict[str, Any], mode: str) -> dict[str, Any] | None:
    row = result.get("modes", {}).get(mode)
    return row if row and row.get("status") == "ok" else None


def _speedup(result: dict[str, Any]) -> float | None:
    a, b = _row_of(result, "fp32"), _row_of(result, "bf16")
    if a and b and a.get("throughput") and b.get("throughput"):
        return b["throughput"] / a["throughput"]
    return None


def _table(lines: list[list[str]], header: list[str], markdown: bool, right: set[int]) -> list[str]:
    if markdown:
        out = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|",
        ]
        out.extend("| " + " | ".join(cells) + " |" for cells in lines)
        return out
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(c) for c in lines)]


def _name(model: str, markdown: bool) -> str:
    base = model.removeprefix("timm:")
    return (f"`{base}`" if markdown else base) + (" (timm, reference)" if model.startswith("timm:") else "")


def _gemm_rates(results: Sequence[dict[str, Any]], mode: str) -> float | None:
    rates = [r["gemm_gflops_per_s"] for res in results if (r := _row_of(res, mode)) and r.get("gemm_gflops_per_s")]
    return statistics.median(rates) if rates else None


def render(results: Sequence[dict[str, Any]], s: Settings, *, markdown: bool, command: str, machine: str) -> str:
    """The MFU table, the breakdown table and the notes (date, machine, command)."""
    from mixerzoo.bench.breakdown import BUCKETS, SHORT  # noqa: PLC0415

    modes = [m for m in MODES if m in s.modes]
    header = ["model", "GMACs", *(MODES[m][0] for m in modes)]
    if "fp32" in modes and "bf16" in modes:
        header.append("bf16 / fp32 speed")
    lines = []
    for res in results:
        ref = res["model"].startswith("timm:")
        gmacs = next((r.get("gmacs") for m in modes if (r := res.get("modes", {}).get(m)) and r.get("gmacs")), None)
        cells = [_name(res["model"], markdown), "–" if gmacs is None else f"{gmacs:.2f}"]
        for m in modes:
            row = _row_of(res, m)
            value = row.get("mfu") if row else None
            text = _pct(value) if row else ("error" if res.get("modes", {}).get(m) or res.get("error") else "–")
            cells.append(_mark(text, value is not None and not ref and value < GOALS[m], markdown))
        if len(header) > 2 + len(modes):
            sp = _speedup(res)
            cells.append(
                _mark("–" if sp is None else f"{sp:.2f}×", sp is not None and not ref and sp < SPEEDUP_GOAL, markdown)
            )
        lines.append(cells)
    out: list[str] = []
    title = "MFU: achieved FLOP/s as a share of a same-dtype GEMM timed in the same run"
    out += [f"#### {title}" if markdown else title, ""]
    out += _table(lines, header, markdown, right=set(range(1, len(header))))
    out.append("")
    if s.breakdown:
        bheader = ["model", "mode", "MFU", *(SHORT[b] for b in BUCKETS), "largest op outside gemm (bucket, share)"]
        blines = []
        for res in results:
            for m in modes:
                row = _row_of(res, m)
                if not row or not row.get("breakdown"):
                    continue
                shares = row["breakdown"]
                top = next((t for t in row.get("breakdown_top", []) if t[1] != "gemm"), None)
                top_s = "–" if top is None else f"{top[0]} ({top[1]}, {100 * top[2]:.0f}%)"
                if markdown and top is not None:
                    top_s = f"`{top[0]}` ({top[1]}, {100 * top[2]:.0f}%)"
                blines.append([
                    _name(res["model"], markdown), MODES[m][0], _pct(row.get("mfu")),
                    *(f"{100 * shares.get(b, 0.0):.0f}" for b in BUCKETS), top_s,
                ])  # fmt: skip
        if blines:
            t2 = "Where the time goes: % of profiled self time by op type (one step per mode)"
            out += [f"#### {t2}" if markdown else t2, ""]
            out += _table(blines, bheader, markdown, right=set(range(2, 3 + len(BUCKETS))))
            out.append("")
    errors = [
        f"{res['model']} {m}: {row.get('error')}" for res in results for m, row in res.get("modes", {}).items()
        if row.get("status") != "ok" or (row.get("error") and "breakdown" in row.get("error", ""))
    ] + [f"{res['model']}: {res['error']}" for res in results if res.get("error")]  # fmt: skip
    rates = []
    for m, dt in (("fp32", "fp32"), ("bf16", "bf16"), ("train", "fp32 (train runs)")):
        if m in modes and (g := _gemm_rates(results, m)) is not None:
            rates.append(f"{dt} {g:.0f} GFLOP/s")
    sizes = sorted({r["gemm_size"] for res in results for m in modes if (r := _row_of(res, m)) and r.get("gemm_size")})
    n = "/".join(f"{x}³" for x in sizes) or "–"
    goal = (
        f"below the goal (fp32 {GOALS['fp32']:.0%}, bf16 {GOALS['bf16']:.0%} and {SPEEDUP_GOAL}× fp32, "
        f"train {GOALS['train']:.0%})."
    )
    plural = {"rounds": "s" if s.rounds != 1 else "", "warmup": "s" if s.warmup != 1 else ""}
    notes = [
        f"Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Machine: {machine}.",
        (
            f"Batch {s.batch}, {s.img_size}², {s.threads} threads, {s.device}; median of {s.rounds} timed "
            f"run{plural['rounds']} per mode alternating model and GEMM, after {s.warmup} warm-up "
            f"step{plural['warmup']}."
        ),
        f"Reference GEMM ({n} `torch.mm`; median over all models' runs): " + (", ".join(rates) or "–") + ".",
        (
            "MFU = GMACs × 2 × img/s (× 3 for the train step: forward + backward) / the GEMM's FLOP/s; bf16 = "
            "`torch.autocast` over fp32 weights vs a bf16 GEMM. " + ("Bold: " if markdown else "*: ") + goal
        ),
        f"Command: `{command}`" if markdown else f"Command: {command}",
    ]
    if errors:
        notes.append("Errors: " + "; ".join(errors))
    out += [f"<sub>{x}</sub><br>" for x in notes] if markdown else notes
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        s = _settings(args)
    except ValueError as err:
        sys.stderr.write(f"bench_mfu.py: {err}\n")
        return 2
    if args.child:  # one model, JSON on stdout
        sys.stdout.write(json.dumps(run_model(args.child, s)) + "\n")
        return 0
    import torch  # noqa: PLC0415

    from mixerzoo.bench.measure import expand_models  # noqa: PLC0415
    from mixerzoo.bench.table import machine_description  # noqa: PLC0415

    try:
        names = expand_models(args.models or list(MODELS))
        torch.device(s.device)
    except (ValueError, RuntimeError) as err:
        sys.stderr.write(f"bench_mfu.py: {err}\n")
        return 2
    torch.set_num_threads(s.threads)
    in_process = args.in_process or args.quick
    results = []
    for i, name in enumerate(names, 1):
        sys.stderr.write(f"[{i}/{len(names)}] {name}\n")
        results.append(run_model(name, s) if in_process else _run_child(name, s, argv))
    command = "python " + shlex.join([os.path.relpath(__file__), *argv])
    text = render(results, s, markdown=args.markdown, command=command, machine=machine_description(s.device))
    sys.stdout.write(text)
    if args.json:
        env = {"command": command, "machine": machine_description(s.device), "settings": dataclasses.asdict(s)}
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=1) + "\n")
    ok = any(_row_of(r, m) for r in results for m in s.modes)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
