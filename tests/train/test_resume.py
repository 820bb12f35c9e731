"""SIGKILL mid-epoch, --resume, and the final weights equal those of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess

import torch
from safetensors.torch import load_file

from _train_helpers import PYTHON, TINY, make_image_folder, subprocess_env

_KILLER = """
import os, signal, sys
from mixerzoo.train._cli import recipe_from_args
from mixerzoo.train.loop import fit
kill_at = int(sys.argv[1])
def on_step(info):
    if info["global_step"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
fit(recipe_from_args(sys.argv[2:]), on_step=on_step)
"""


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=10)  # 18 train images, batch 4 -> 4 steps/epoch
    flags = [*TINY, "--data", str(data), "--epochs", "2", "--ckpt-every", "3", "--aug-ops", "2", "--reprob", "0.5",
             "--ema"]
    env = subprocess_env()
    ref = subprocess.run([PYTHON, "-m", "mixerzoo.train", "train", *flags, "--output", str(tmp_path / "ref")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "run"
    killed = subprocess.run([PYTHON, "-c", _KILLER, "7", *flags, "--output", str(run)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 6  # checkpoints at steps 3, 4 (epoch end), 6; killed after step 7
    meta = json.loads((run / "checkpoints" / f"{latest['name']}.json").read_text())
    assert (meta["state"]["epoch"], meta["state"]["step_in_epoch"]) == (1, 2)  # mid-epoch: 2 of 4 batches done
    assert not (run / "model").exists()
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no torn temp files

    resumed = subprocess.run([PYTHON, "-m", "mixerzoo.train", "train", *flags, "--output", str(run), "--resume"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after SIGKILL + resume"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["event"] == "epoch"] == [1, 2]
