"""The command line end to end: a tiny 2-model bench in a subprocess, then the model table from its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixerzoo.bench._cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable, "-m", "mixerzoo.bench", "bench", "test_poolformer", "test_bi*",
        "--batch", "1", "--img-size", "64", "--threads", "1", "--warmup", "1", "--runs", "2",
        "--out-dir", str(out), "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    return proc, out


def test_bench_prints_table_and_writes_files(bench_run) -> None:  # noqa: ANN001
    proc, out = bench_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split()[0] == "model"
    models = [ln.split()[0] for ln in lines[2:5]]
    assert models == ["timm:resnet50", "test_poolformer", "test_biformer"]
    stem = "bench-infer-cpu-float32-b1-64"
    for suffix in (".csv", ".json", "_gmacs.png"):
        assert (out / f"{stem}{suffix}").is_file(), sorted(p.name for p in out.iterdir())
    data = json.loads((out / f"{stem}.json").read_text())
    rows = {r["model"]: r for r in data["results"]}
    for name in ("test_poolformer", "test_biformer"):
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["gmacs"] > 0 and r["params_m"] > 0 and r["threads"] == 1 and r["img_size"] == 64
        assert r["ratio"] == pytest.approx(r["throughput"] / rows["timm:resnet50"]["throughput"])
        assert r["mem_kind"] == "cpu_peak_rss" and r["peak_mem_mb"] > 0
    assert data["environment"]["config"]["img_size"] == 64


def test_model_table_from_bench_json(bench_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    _, out = bench_run
    readme = tmp_path / "README.md"
    readme.write_text("<!-- model-table:start -->\n<!-- model-table:end -->\n")
    js = out / "bench-infer-cpu-float32-b1-64.json"
    assert main(["model-table", "poolformer_s12", "--bench-json", str(js), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "`poolformer_s12`" in text and "[77.2](https://github.com/sail-sg/poolformer)" in text
    assert "batch 1" in text  # the bench note names the run's settings
    assert main(["model-table", "poolformer_s12"]) == 0
    assert "| `poolformer_s12` |" in capsys.readouterr().out


def test_bad_arguments_name_the_value(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "no_such_model_*"]) == 2
    assert "no_such_model_*" in capsys.readouterr().err
    assert main(["bench", "test_poolformer", "--batch", "0"]) == 2
    assert "batch=0" in capsys.readouterr().err
