"""scripts/device-check.sh: the prepared GPU verification run, kept alive on the CPU by its dry run.

The dry run executes the same jobs as the GPU run (Triton kernels under ``TRITON_INTERPRET=1``, one family per
kernel, speed, models, a training epoch, the sanitizer cases) on tiny shapes, and must write a report with the
GPU run's schema and ``"device": "cpu-dry-run"``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "scripts" / "device_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("device_check", mod)
    spec.loader.exec_module(mod)
    return mod


dc = _module()


def test_every_triton_kernel_has_device_cases() -> None:
    """A new ``mixerzoo/kernels/<op>/triton.py`` must come with device-check cases (GPU and dry run)."""
    jobs = [name for name, _ in dc.plan(False, None)]
    kernels = [j.split(".", 1)[1] for j in jobs if j.startswith("kernels.")]
    assert kernels and kernels == sorted(dc.triton_ops())
    for k in kernels:
        cases = dc.KERNEL_CASES[k][1]
        assert any(c.get("dry") for c in cases), k
        assert any(c.get("dry") and c["dtype"] == "bfloat16" for c in cases), f"{k}: no bf16 case for the sanitizer"
        assert {c["dtype"] for c in cases} == {"float32", "float16", "bfloat16"}, k


def test_validate_report_flags_schema_errors() -> None:
    good = {"schema": 1, "device": "cpu-dry-run", "dry_run": True, "started": "t", "wall_s": 1.0, "budget_s": 90,
            "env": {}, "summary": {"ok": True, "counts": {}, "failed": []},
            "parts": {"env": {"status": "ok", "budget_s": 8.0, "wall_s": 1, "records": [{"id": "x", "ok": None}],
                              "info": {}}}}
    assert dc.validate_report(good) == []
    bad = json.loads(json.dumps(good))
    del bad["device"]
    bad["parts"]["env"]["status"] = "fine"
    bad["parts"]["env"]["records"] = [{"ok": 1}]
    errs = dc.validate_report(bad)
    assert any("device" in e for e in errs)
    assert any("status" in e for e in errs)
    assert any("record" in e for e in errs)


def test_bad_budget_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_check.py"), "--dry-run", "--budget", "x",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "device_check: error: --budget must be a number of seconds, got 'x'"


def test_a_hanging_child_is_killed_at_its_deadline(tmp_path: Path) -> None:
    """The driver's pump never blocks on a partial line and kills the child's process group on time."""
    with open(tmp_path / "log", "w") as logf:
        t0 = dc.time.monotonic()
        rc, timed_out = dc._spawn([("_hang", 1.0)], True, tmp_path, 3.0, logf)
        took = dc.time.monotonic() - t0
    assert (rc, timed_out) == (None, True)
    assert took < 10
    assert (tmp_path / "log").read_text() == "hanging without a newline"


def test_a_crashing_job_does_not_stop_the_others(tmp_path: Path) -> None:
    """A job whose process dies is reported as an error; the jobs after it run in a fresh process."""
    report = dc.drive(tmp_path, True, 60.0, None, jobs=[("_crash", 5.0), ("_noop", 5.0)])
    assert report["parts"]["_crash"]["status"] == "error"
    assert "exited rc=3" in report["parts"]["_crash"]["error"]
    assert report["parts"]["_noop"]["status"] == "ok"
    assert report["summary"]["ok"] is False and report["summary"]["failed"] == ["_crash:error"]
    assert dc.validate_report(json.loads((tmp_path / "device-report.json").read_text())) == []


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_dry_run_report(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device-check.sh"), "--dry-run", str(tmp_path),
                           "--budget", "40"], capture_output=True, text=True, env=env, timeout=160)
    report_path = tmp_path / "device-report.json"
    assert report_path.exists(), f"no report (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    assert dc.validate_report(report) == []
    assert report["device"] == "cpu-dry-run" and report["dry_run"] is True
    assert (tmp_path / "device-report.md").read_text().startswith("# mixerzoo device check — cpu-dry-run")
    assert (tmp_path / "device-check.log").stat().st_size > 0
    parts = report["parts"]
    assert set(parts) == {name for name, _ in dc.plan(True, None)}
    # every part ran or was cut by the budget; nothing failed, crashed or hung
    assert {name: p["status"] for name, p in parts.items() if p["status"] not in ("ok", "skipped")} == {}, (
        report["summary"], proc.stdout[-3000:])
    for name, part in parts.items():  # each kernel checked at least one case against the reference
        if name.startswith("kernels."):
            assert any(r["ok"] is True for r in part["records"]), (name, part["records"])
    assert proc.returncode == 0, proc.stdout[-3000:]
