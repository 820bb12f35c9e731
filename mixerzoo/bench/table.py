"""Render bench results: terminal table, CSV/JSON files, PNG plots, and the README model table."""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from mixerzoo.bench.measure import BenchConfig, BenchResult, Profile

__all__ = [
    "README_END",
    "README_START",
    "cpu_model",
    "environment",
    "format_table",
    "machine_description",
    "model_table",
    "plot_results",
    "read_results",
    "rewrite_readme",
    "write_csv",
    "write_json",
    "write_outputs",
]

README_START = "<!-- model-table:start -->"
README_END = "<!-- model-table:end -->"


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def format_table(rows: Sequence[BenchResult]) -> str:
    """A fixed-width text table of bench rows (failed rows show their status and message). With MFU rows:
    achieved GFLOP/s, the GEMM's GFLOP/s and the MFU; with breakdowns: the op-type shares (percent)."""
    from mixerzoo.bench.breakdown import format_breakdown  # noqa: PLC0415

    header = ["model", "params(M)", "GMACs", "img", "batch", "ms/step", "img/s", "× yard", "peak MiB", "top-1"]
    has_mfu = any(r.gemm_gflops_per_s is not None for r in rows)
    has_bd = any(r.breakdown for r in rows)
    if has_mfu:
        header += ["GFLOP/s", "GEMM GFLOP/s", "MFU"]
    if has_bd:
        header.append("self time % by op type")
    header.append("status")
    body = []
    for r in rows:
        status = r.status if not r.error else f"{r.status}: {r.error}"
        cells = [
            r.model, _f(r.params_m, ".2f"), _f(r.gmacs, ".3f"), str(r.img_size), str(r.batch),
            _f(r.latency_ms, ".1f"), _f(r.throughput, ".1f"), _f(r.ratio, ".3f"), _f(r.peak_mem_mb, ".0f"),
            _f(r.top1, ".1f"),
        ]  # fmt: skip
        if has_mfu:
            cells += [_f(r.gflops_per_s, ".1f"), _f(r.gemm_gflops_per_s, ".1f"), _pct(r.mfu)]
        if has_bd:
            cells.append(format_breakdown(r.breakdown))
        cells.append(status[:90])
        body.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    right = set(range(1, 10)) | ({10, 11, 12} if has_mfu else set())

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out.extend(line(row) for row in body)
    return "\n".join(out)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str = "cpu") -> str:
    """``AMD EPYC, 2 threads`` (CPU: model name and ``torch.get_num_threads()``), or the GPU's name."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(dev)} (host: {cpu_model()})"
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def environment(cfg: BenchConfig | None = None) -> dict[str, Any]:
    """Where and how a run happened (stored with the results)."""
    env: dict[str, Any] = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import timm  # noqa: PLC0415

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    if cfg is not None:
        env["config"] = dataclasses.asdict(cfg)
        if cfg.device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(torch.device(cfg.device))
    return env


_CSV_SKIP = ("times_ms", "gemm_times_ms", "breakdown", "breakdown_top")
_CSV_FIELDS = [f.name for f in dataclasses.fields(BenchResult) if f.name not in _CSV_SKIP]


def _csv_fields(rows: Sequence[BenchResult]) -> list[str]:
    from mixerzoo.bench.breakdown import BUCKETS  # noqa: PLC0415

    extra = [f"share_{b}" for b in BUCKETS] if any(r.breakdown for r in rows) else []
    return _CSV_FIELDS + extra


def write_csv(rows: Sequence[BenchResult], path: str | os.PathLike[str]) -> Path:
    """One row per result; a breakdown becomes ``share_<bucket>`` columns."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_csv_fields(rows), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            d = r.to_dict()
            for b, share in (r.breakdown or {}).items():
                d[f"share_{b}"] = share
            w.writerow(d)
    return path


def write_json(rows: Sequence[BenchResult], path: str | os.PathLike[str], env: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"environment": env or {}, "results": [r.to_dict() for r in rows]}, indent=1) + "\n")
    return path


def read_results(path: str | os.PathLike[str]) -> list[BenchResult]:
    """Rows from a JSON file written by :func:`write_json`."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError(f"{path} is not a mixerzoo bench JSON file (no 'results' key)")
    names = {f.name for f in dataclasses.fields(BenchResult)}
    return [BenchResult(**{k: v for k, v in row.items() if k in names}) for row in data["results"]]


def _canvas(title: str, xlabel: str, ylabel: str):  # noqa: ANN202 - matplotlib objects
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - no pyplot, no global state
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _scatter(ax, rows: Sequence[BenchResult], xs: Sequence[float], ys: Sequence[float]) -> None:  # noqa: ANN001
    families = sorted({r.family or "?" for r in rows})
    cmap = {fam: f"C{i % 10}" for i, fam in enumerate(families)}
    for fam in families:
        pts = [(x, y) for r, x, y in zip(rows, xs, ys) if (r.family or "?") == fam]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=cmap[fam], label=fam, s=28, zorder=3)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r.model.removeprefix("timm:"), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.legend(fontsize=7, loc="best")


def plot_results(rows: Sequence[BenchResult], out_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    """PNG plots: throughput (ratio to the yardstick when there is one) vs GMACs, and vs official top-1
    for the models that have one. Returns the files written (the top-1 plot only if a point exists)."""
    out_dir = Path(out_dir)
    ok = [r for r in rows if r.status == "ok" and r.throughput is not None and r.gmacs is not None]
    use_ratio = any(r.ratio is not None for r in ok)
    ok = [r for r in ok if (r.ratio is not None) or not use_ratio]
    y_of = (lambda r: r.ratio) if use_ratio else (lambda r: r.throughput)
    yard = next((r.model for r in rows if r.ratio == 1.0), "yardstick")
    ylabel = f"throughput / {yard.removeprefix('timm:')}" if use_ratio else "images / s"
    first = rows[0] if rows else None
    sub = (
        f"{first.mode}, {first.device}, {first.dtype}, batch {first.batch}, threads {first.threads}"
        + (", CPU clock" if first.clock == "cpu" else "")
        if first
        else ""
    )
    written = []
    fig, ax = _canvas(f"Throughput vs GMACs ({sub})", "GMACs (multiply-accumulates, batch 1)", ylabel)
    _scatter(ax, ok, [r.gmacs for r in ok], [y_of(r) for r in ok])
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter  # noqa: PLC0415

    for axis in (ax.xaxis,):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    path = out_dir / f"{stem}_gmacs.png"
    fig.savefig(path)
    written.append(path)
    top = [r for r in ok if r.top1 is not None]
    if top:
        fig, ax = _canvas(f"Throughput vs official top-1 ({sub})", "ImageNet-1k top-1 (%, official)", ylabel)
        _scatter(ax, top, [r.top1 for r in top], [y_of(r) for r in top])
        path = out_dir / f"{stem}_top1.png"
        fig.savefig(path)
        written.append(path)
    return written


def write_outputs(
    rows: Sequence[BenchResult], cfg: BenchConfig, out_dir: str | os.PathLike[str], stem: str | None = None,
    plots: bool = True,
) -> list[Path]:
    """CSV + JSON (+ plots) for a run, named ``bench-<mode>-<device>-<dtype>-b<batch>[-<img>]``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if stem is None:
        dev = re.sub(r"[^A-Za-z0-9]+", "", cfg.device)
        stem = f"bench-{cfg.mode}-{dev}-{cfg.dtype}-b{cfg.batch}" + (f"-{cfg.img_size}" if cfg.img_size else "")
        stem += "-compiled" if cfg.compile else ""
        stem += "-autocast" if cfg.autocast and cfg.dtype != "float32" and not cfg.train else ""
    files = [write_csv(rows, out_dir / f"{stem}.csv"), write_json(rows, out_dir / f"{stem}.json", environment(cfg))]
    if plots:
        files.extend(plot_results(rows, out_dir, stem))
    return files


# -------------------------------------------------------------------------------- README table
def _weights(name: str) -> str:
    from mixerzoo.zoo._registry import get_entry  # noqa: PLC0415

    tags = [t for t, c in get_entry(name).pretrained.items() if c.get("hf_hub_id") or c.get("url") or c.get("file")]
    return ", ".join(f"`{t}`" for t in tags) if tags else "–"


def _source_link(source: str) -> str:
    m = re.search(r"https?://\S+", source)
    if m:
        return m.group(0).rstrip(").,;")
    if source.startswith("timm "):
        return "https://github.com/huggingface/pytorch-image-models/tree/main/results"
    return ""


def model_table(
    names: Iterable[str], profiles: dict[str, Profile], bench: dict[str, BenchResult] | None = None,
    yardstick: str = "resnet50", bench_note: str = "",
) -> str:
    """The README model table (markdown): name, weights, params, GMACs, official top-1 with a link to its
    source, and the CPU throughput ratio to the yardstick from a bench run (``–`` where absent)."""
    from mixerzoo.bench.official import official  # noqa: PLC0415

    bench = bench or {}
    lines = [
        f"| model | pretrained tags | params (M) | GMACs | top-1 (official) | CPU throughput × {yardstick} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in names:
        prof = profiles.get(name)
        off = official(name)
        top1 = "–"
        if off is not None and off.top1 is not None:
            link = _source_link(off.source)
            top1 = f"[{off.top1:g}]({link})" if link else f"{off.top1:g}"
        row = bench.get(name)
        ratio = f"{row.ratio:.2f}" if row is not None and row.ratio is not None else "–"
        size = f" @{prof.img_size}" if prof is not None and prof.img_size != 224 else ""
        lines.append(
            f"| `{name}`{size} | {_weights(name)} | {_f(prof.params_m if prof else None, '.2f')} | "
            f"{_f(prof.gmacs if prof else None, '.2f')} | {top1} | {ratio} |"
        )
    text = "\n".join(lines)
    notes = [
        "GMACs: multiply-accumulates at the model's default input size, batch 1, counted by "
        "`torch.utils.flop_counter` (sparse attention counted as what it computes).",
    ]
    if bench_note:
        notes.append(bench_note)
    notes.append("Generated by `mixerzoo model-table`; do not edit by hand.")
    return text + "\n\n" + "\n".join(f"<sub>{n}</sub><br>" for n in notes[:-1]) + f"\n<sub>{notes[-1]}</sub>\n"


def rewrite_readme(path: str | os.PathLike[str], table: str) -> bool:
    """Replace the text between the model-table markers in ``path``; returns True if the file changed.
    Raises ``ValueError`` naming the file when the markers are missing or out of order."""
    path = Path(path)
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"{path} has no '{README_START}' ... '{README_END}' block (found start={start}, end={end})")
    new = text[: start + len(README_START)] + "\n" + table.rstrip("\n") + "\n" + text[end:]
    if new == text:
        return False
    path.write_text(new)
    return True
