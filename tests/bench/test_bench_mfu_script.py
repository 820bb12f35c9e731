"""``benchmarks/bench_mfu.py``: a --quick run on one tiny model, and the tables it renders from fixed rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_mfu", ROOT / "benchmarks" / "bench_mfu.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_quick_run_prints_the_tables(script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    js = tmp_path / "mfu.json"
    argv = ["--quick", "--models", "test_poolformer", "--img-size", "32", "--markdown", "--json", str(js)]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "| model | GMACs | fp32 infer | bf16-autocast infer | fp32 train step | bf16 / fp32 speed |" in out
    assert "| `test_poolformer` |" in out
    assert "#### Where the time goes" in out and "largest op outside gemm" in out
    assert "Machine: " in out and " threads" in out and "Date: " in out
    assert "bench_mfu.py --quick --models test_poolformer --img-size 32 --markdown --json" in out
    data = json.loads(js.read_text())
    (res,) = data["results"]
    assert set(res["modes"]) == {"fp32", "bf16", "train"}
    for mode, row in res["modes"].items():
        assert row["status"] == "ok", (mode, row)
        assert row["batch"] == 2 and row["img_size"] == 32 and row["gemm_size"] == 256
        assert row["mfu"] == pytest.approx(row["gflops_per_s"] / row["gemm_gflops_per_s"])
        assert sum(row["breakdown"].values()) == pytest.approx(1.0, abs=1e-4)
    assert res["modes"]["bf16"]["autocast"] is True and res["modes"]["bf16"]["dtype"] == "bfloat16"
    assert res["modes"]["train"]["mode"] == "train"


def test_bad_arguments_exit_2(script: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert script.main(["--quick", "--models", "no_such_model_x"]) == 2
    assert "no_such_model_x" in capsys.readouterr().err
    assert script.main(["--quick", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def _row(mfu: float, throughput: float, bd: dict[str, float] | None = None) -> dict:
    top = [["aten::mm", "gemm", 0.5], ["aten::copy_", "copy", 0.3]]
    return {
        "status": "ok", "mfu": mfu, "throughput": throughput, "gmacs": 1.0, "gemm_gflops_per_s": 100.0,
        "gemm_size": 2048, "breakdown": bd, "breakdown_top": top,
    }  # fmt: skip


def test_render_marks_missed_goals(script: ModuleType) -> None:
    shares = {"gemm": 0.5, "attention": 0.1, "norm": 0.05, "copy": 0.3, "elementwise": 0.05, "other": 0.0}
    results = [
        {"model": "timm:resnet50", "modes": {"fp32": _row(0.5, 10), "bf16": _row(0.3, 12), "train": _row(0.5, 3)}},
        {"model": "nat_mini", "modes": {"fp32": _row(0.8, 10, shares), "bf16": _row(0.3, 15), "train": _row(0.7, 3)}},
    ]
    s = script.Settings(batch=8, img_size=224, rounds=5, warmup=2, threads=2, device="cpu", gemm_size=None,
                        breakdown=True, modes=("fp32", "bf16", "train"))  # fmt: skip
    md = script.render(results, s, markdown=True, command="python benchmarks/bench_mfu.py", machine="CPU X, 2 threads")
    assert "| resnet50 (timm, reference) | 1.00 | 50% | 30% | 50% | 1.20× |".replace("resnet50", "`resnet50`") in md
    assert "| `nat_mini` | 1.00 | 80% | **30%** | 70% | **1.50×** |" in md  # bf16 below 45% and below 1.8x
    assert "| `nat_mini` | fp32 infer | 80% | 50 | 10 | 5 | 30 | 5 | 0 | `aten::copy_` (copy, 30%) |" in md
    assert "Reference GEMM (2048³ `torch.mm`; median over all models' runs): fp32 100 GFLOP/s, bf16 100" in md
    assert "Machine: CPU X, 2 threads" in md and "Command: `python benchmarks/bench_mfu.py`" in md
    text = script.render(results, s, markdown=False, command="cmd", machine="m")
    assert "30%*" in text and "**" not in text
