"""``mixerzoo compare`` on tiny budgets: the report, a failing spec's row, resuming after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mixerzoo.cli import main
from mixerzoo.plugins import register_mixer

# 2 steps per epoch, no workers, no exported model: the fixed costs of a run, nothing more
TINY = ["--epochs", "1", "--img-size", "32", "--data", "pathfinder:32?n=64&val=32", "--batch-size", "32",
        "--workers", "0", "--no-save-model", "--bench-iters", "1", "--quiet"]


class _BrokenMixer(nn.Module):
    """A third-party mixer that builds (and so passes the spec check) but fails in forward."""

    layout = "nchw"
    kind = "mixer"

    def __init__(self, dim: int, *, num_heads: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("compare_broken_fixture: this mixer always fails")


def _rows(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    register_mixer("compare_broken_fixture", _BrokenMixer, override=True)
    out = tmp_path_factory.mktemp("cmp") / "out"
    rc = main(["compare", "test_poolformer", "--mixers", "pooling,attention,compare_broken_fixture", *TINY,
               "--output", str(out)])
    return out, rc


def test_report_files_and_rows(compared: tuple[Path, int]) -> None:
    out, rc = compared
    assert rc == 1  # one spec failed
    for name in ("results.md", "results.csv", "results.json", "acc_vs_gmacs.png", "acc_vs_throughput.png",
                 "learning_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = _rows(out)
    assert [r["label"] for r in rows] == ["pooling", "attention", "compare_broken_fixture"]
    ok = rows[:2]
    for r in ok:
        assert r["status"] == "ok" and r["epochs"] == 1
        assert r["params_m"] > 0 and r["gmacs"] > 0 and r["train_img_s"] > 0 and r["infer_img_s"] > 0
        assert r["peak_mem_mb"] is not None and r["mem_kind"] == "cpu_step_rss"
        assert 0 <= r["top1"] <= 100 and r["curve"]["step"] and r["curve"]["val_top1"]
    assert ok[0]["train_ratio"] == 1.0 and ok[1]["train_ratio"] == pytest.approx(
        ok[1]["train_img_s"] / ok[0]["train_img_s"])
    assert ok[0]["params_m"] != ok[1]["params_m"]  # attention has qkv/proj weights, pooling none
    table = (out / "results.md").read_text()
    assert "| 0 | `pooling` | ok |" in table and "| 1 | `attention` | ok |" in table
    with open(out / "results.csv") as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["pooling", "attention", "compare_broken_fixture"]


def test_failing_spec_is_reported_in_its_row(compared: tuple[Path, int]) -> None:
    out, _ = compared
    bad = _rows(out)[2]
    assert bad["status"] == "failed" and "this mixer always fails" in bad["error"]
    assert "this mixer always fails" in (out / "results.md").read_text()


def test_interrupted_spec_resumes_from_its_checkpoint(compared: tuple[Path, int]) -> None:
    out, _ = compared
    before = _rows(out)[1]
    folder = Path(before["folder"])
    (folder / "result.json").unlink()  # as if killed after its last checkpoint, before its result was written
    ckpts = sorted(p.name for p in (folder / "run" / "checkpoints").glob("step_*"))
    main(["compare", "test_poolformer", "--mixers", "pooling,attention,compare_broken_fixture", *TINY,
          "--output", str(out)])
    after = _rows(out)[1]
    assert after["status"] == "ok" and after["resumed"] is True
    assert after["top1"] == before["top1"] and after["curve"] == before["curve"]
    assert sorted(p.name for p in (folder / "run" / "checkpoints").glob("step_*")) == ckpts  # no step trained


def test_sigkill_then_rerun_keeps_finished_specs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mixerzoo", "compare", "test_poolformer", "--mixers", "pooling,identity",
           *TINY[:-1], "--epochs", "2", "--quiet", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    first = out / "specs" / "0-pooling" / "result.json"
    second = out / "specs" / "1-identity" / "job.json"
    deadline = time.monotonic() + 120
    while not (first.is_file() and second.is_file()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.is_file(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_row = json.loads(first.read_text())["row"]
    mtime = first.stat().st_mtime_ns
    rc = main(["compare", "test_poolformer", "--mixers", "pooling,identity", *TINY[:-1], "--epochs", "2", "--quiet",
               "--output", str(out)])
    assert rc == 0
    assert first.stat().st_mtime_ns == mtime  # not trained again
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {k: v for k, v in rows[0].items() if k not in ("train_ratio", "infer_ratio", "folder")} == \
        {k: v for k, v in done_row.items() if k != "folder"}


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main(["compare", "test_poolformer", "--mixers", "poolingg", *TINY, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixerzoo compare: error:") and "poolingg" in err and "\n" not in err
    assert main(["compare", "test_poolformer", "--mixers", "pooling", "--minutes", "1", "--epochs", "2",
                 "--output", str(out)]) == 2
    assert "--epochs and --minutes" in capsys.readouterr().err
    assert not out.exists()


def test_specs_file_with_per_stage_mixers(tmp_path: Path) -> None:
    from mixerzoo.compare.run import load_specs_file, parse_spec_list

    f = tmp_path / "specs.yaml"
    f.write_text("- pooling\n- {mixers: [pooling, pooling, attention, attention], label: mixed}\n"
                 "- {model: test_vit, label: vit}\n")
    specs = load_specs_file(f, "test_poolformer")
    assert [label for _, label in specs] == [None, "mixed", "vit"]
    assert specs[1][0].mixers == ["pooling", "pooling", "attention", "attention"] and specs[2][0].model == "test_vit"
    per_stage = parse_spec_list("test_poolformer", "pooling,pooling/attention/attention/attention")
    assert per_stage[1].mixers == ["pooling", "attention", "attention", "attention"]


def test_minutes_budget_decides_epochs_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["compare", "test_poolformer", "--mixers", "pooling", *TINY[2:], "--minutes", "0.02", "--output", str(out)]
    assert main(args) == 0
    budget = json.loads((out / "specs" / "0-pooling" / "budget.json").read_text())
    row = _rows(out)[0]
    assert budget["minutes"] == 0.02 and budget["epochs"] >= 1 and row["epochs"] == budget["epochs"]
    recipe = json.loads((out / "specs" / "0-pooling" / "run" / "recipe.json").read_text())
    assert recipe["epochs"] == budget["epochs"]
