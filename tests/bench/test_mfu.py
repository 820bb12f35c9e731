"""MFU: the maths, the reference GEMM, the bench wiring (on fixed fake step times) and ``mixerzoo bench --mfu``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mixerzoo.bench import measure
from mixerzoo.bench import mfu as M
from mixerzoo.bench._cli import main
from mixerzoo.bench.measure import BenchConfig, bench_models, profile_model

TINY = {"batch": 2, "img_size": 32, "warmup": 1, "runs": 3, "threads": 1, "memory": False, "yardstick": None}


def test_mfu_maths() -> None:
    # 4 GFLOP per image at 50 img/s = 200 GFLOP/s; a 2048^3 GEMM in 0.0859 s = 200 GFLOP/s
    gemm = M.gemm_flops_per_s(2048, 2 * 2048**3 / 200e9)
    assert gemm == pytest.approx(200e9)
    assert M.achieved_flops_per_s(4e9, 50) == pytest.approx(200e9)
    assert M.mfu(4e9, 50, gemm) == pytest.approx(1.0)
    assert M.mfu(4e9, 25, gemm) == pytest.approx(0.5)
    # a training step is charged forward + backward = 3 x forward
    assert M.TRAIN_FLOP_FACTOR == 3
    assert M.mfu(4e9, 10, gemm, train=True) == pytest.approx(3 * 4e9 * 10 / 200e9)
    assert M.median_gemm_flops_per_s(10, [1.0, 0.5, 2.0]) == pytest.approx(2 * 1000 / 1.0)
    with pytest.raises(ValueError, match="gemm_flops_per_s=0"):
        M.mfu(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="seconds=0"):
        M.gemm_flops_per_s(8, 0.0)


def test_default_gemm_sizes() -> None:
    assert M.default_gemm_size("cpu", torch.float32) == 2048
    assert M.default_gemm_size("cpu", torch.bfloat16) == 2048
    assert M.default_gemm_size("cpu", torch.float16) == 512  # no fp16 matmul units on most CPUs
    assert M.default_gemm_size("cuda", torch.bfloat16) == 8192
    assert BenchConfig(dtype="fp16").gemm_n == 512 and BenchConfig(gemm_size=100).gemm_n == 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gemm_step_computes_the_product_in_its_dtype(dtype: torch.dtype) -> None:
    g = M.GemmStep(32, "cpu", dtype)
    g()
    assert g.c.dtype == dtype and g.flops == 2 * 32**3
    ref = g.a.double() @ g.b.double()
    tol = 1e-4 if dtype == torch.float32 else 0.3
    torch.testing.assert_close(g.c.double(), ref, atol=tol * 32, rtol=tol)


def test_gemm_step_timed_uses_its_clock() -> None:
    g = M.GemmStep(8)
    ticks = iter([10.0, 10.5])
    g.clock = lambda: next(ticks)
    assert g.timed(iters=5) == pytest.approx(0.1)  # 0.5 s over 5 GEMMs


@pytest.mark.parametrize("train", [False, True])
def test_bench_mfu_from_fixed_step_times(monkeypatch: pytest.MonkeyPatch, train: bool) -> None:
    """With the model step fixed at 0.1 s and the GEMM at 0.01 s, the row's MFU is exactly
    (flops/img x batch / 0.1 [x3]) / (2 n^3 / 0.01), and every GEMM sample alternates with a model run."""
    calls: list[str] = []

    def model_timed(self, iters: int) -> float:  # noqa: ANN001
        calls.append("model")
        return 0.1

    def gemm_timed(self, iters: int) -> float:  # noqa: ANN001
        calls.append("gemm")
        return 0.01

    monkeypatch.setattr(measure._Step, "timed", model_timed)
    monkeypatch.setattr(M.GemmStep, "timed", gemm_timed)
    cfg = BenchConfig(**TINY, mfu=True, gemm_size=16, train=train)
    (row,) = bench_models(["test_poolformer"], cfg, progress=False)
    assert row.status == "ok", row.error
    assert calls == ["model", "gemm"] * 3
    flops = profile_model("test_poolformer", 32).flops
    achieved = flops * (3 if train else 1) * 2 / 0.1
    gemm = 2 * 16**3 / 0.01
    assert row.gemm_size == 16 and row.gemm_times_ms == pytest.approx([10.0] * 3)
    assert row.gemm_gflops_per_s == pytest.approx(gemm / 1e9)
    assert row.gflops_per_s == pytest.approx(achieved / 1e9)
    assert row.mfu == pytest.approx(achieved / gemm)


def test_bench_without_mfu_times_no_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M.GemmStep, "__init__", lambda *a, **k: pytest.fail("GEMM built without mfu"))
    (row,) = bench_models(["test_poolformer"], BenchConfig(**TINY), progress=False)
    assert row.status == "ok" and row.mfu is None and row.gemm_gflops_per_s is None


def test_autocast_inference_keeps_fp32_weights() -> None:
    cfg = BenchConfig(**TINY, dtype="bfloat16", autocast=True)
    step = measure._Step("test_poolformer", cfg, 32)
    assert step.autocast_dtype == torch.bfloat16 and step.x.dtype == torch.float32
    assert next(step.model.parameters()).dtype == torch.float32
    cast = measure._Step("test_poolformer", BenchConfig(**TINY, dtype="bfloat16"), 32)
    assert cast.autocast_dtype is None and next(cast.model.parameters()).dtype == torch.bfloat16


def test_cli_mfu_and_breakdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "bench", "test_poolformer", "--batch", "2", "--img-size", "32", "--threads", "1", "--warmup", "1",
        "--runs", "1", "--mfu", "--gemm-size", "64", "--breakdown", "--dtype", "bfloat16", "--autocast",
        "--no-memory", "--yardstick", "none", "--no-plots", "--quiet", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "MFU" in header and "GEMM GFLOP/s" in header and "self time % by op type" in header
    stem = "bench-infer-cpu-bfloat16-b2-32-autocast"
    (row,) = json.loads((tmp_path / f"{stem}.json").read_text())["results"]
    assert row["autocast"] is True and row["gemm_size"] == 64
    assert row["mfu"] == pytest.approx(row["gflops_per_s"] / row["gemm_gflops_per_s"])
    assert sum(row["breakdown"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "share_gemm" in (tmp_path / f"{stem}.csv").read_text().splitlines()[0]
    assert f"{100 * row['mfu']:.0f}%" in out


def test_cli_bad_gemm_size_names_the_value(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "test_poolformer", "--mfu", "--gemm-size", "0"]) == 2
    assert "gemm_size=0" in capsys.readouterr().err
