"""``mixerzoo.bench.table``: terminal table, files, plots, README model table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mixerzoo.bench.measure import BenchConfig, BenchResult, Profile
from mixerzoo.bench.table import (
    README_END,
    README_START,
    format_table,
    model_table,
    read_results,
    rewrite_readme,
    write_outputs,
)


def _rows() -> list[BenchResult]:
    common = dict(mode="infer", device="cpu", dtype="float32", batch=8, img_size=224, threads=2)
    return [
        BenchResult("timm:resnet50", family="timm", params_m=25.56, gmacs=4.09, latency_ms=400.0, throughput=20.0,
                    ratio=1.0, peak_mem_mb=500.0, **common),
        BenchResult("poolformer_s12", family="poolformer", params_m=11.92, gmacs=1.81, latency_ms=200.0,
                    throughput=40.0, yardstick_throughput=20.0, ratio=2.0, top1=77.2, top1_source="x", **common),
        BenchResult("biformer_tiny", family="biformer", params_m=13.14, gmacs=2.22, status="oom",
                    error="out of memory: tried 2 GiB", top1=81.4, **common),
    ]  # fmt: skip


def test_format_table_shows_every_row_and_failures() -> None:
    text = format_table(_rows())
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].split()[:3] == ["model", "params(M)", "GMACs"]
    assert "2.000" in lines[3] and "40.0" in lines[3]
    assert "oom: out of memory: tried 2 GiB" in lines[4]


def test_files_and_plots(tmp_path: Path) -> None:
    cfg = BenchConfig(batch=8, img_size=224)
    files = write_outputs(_rows(), cfg, tmp_path)
    names = sorted(f.name for f in files)
    stem = "bench-infer-cpu-float32-b8-224"
    assert names == sorted([f"{stem}.csv", f"{stem}.json", f"{stem}_gmacs.png", f"{stem}_top1.png"])
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    with (tmp_path / f"{stem}.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["timm:resnet50", "poolformer_s12", "biformer_tiny"]
    assert rows[2]["status"] == "oom"
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert data["environment"]["config"]["batch"] == 8 and "torch" in data["environment"]
    back = read_results(tmp_path / f"{stem}.json")
    assert back[1] == _rows()[1]


def test_model_table_and_readme_rewrite(tmp_path: Path) -> None:
    profiles = {"poolformer_s12": Profile(11_915_176, 3_624_534_016, 224, "meta")}
    bench = {r.model: r for r in _rows()}
    table = model_table(["poolformer_s12", "poolformer_s24"], profiles, bench, bench_note="CPU note.")
    lines = table.splitlines()
    assert lines[0].startswith("| model | pretrained tags | params (M) | GMACs | top-1 (official) |")
    s12 = lines[2]
    assert "`poolformer_s12`" in s12 and "`sail_in1k`" in s12 and "11.92" in s12 and "1.81" in s12
    assert "[77.2](https://github.com/sail-sg/poolformer)" in s12 and s12.endswith("| 2.00 |")
    assert lines[3].count("–") >= 3  # s24: no profile, no bench row
    assert "CPU note." in table
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold\n{README_END}\n\nrest\n")
    assert rewrite_readme(readme, table)
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n") and text.endswith(f"{README_END}\n\nrest\n")
    assert not rewrite_readme(readme, table)  # idempotent
    (tmp_path / "bad.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="model-table:start"):
        rewrite_readme(tmp_path / "bad.md", table)
