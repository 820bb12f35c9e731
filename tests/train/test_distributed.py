"""DDP: 2 CPU processes under torchrun (gloo), with gradient accumulation, give the same weights as 1 process on the
same global batch."""

from __future__ import annotations

import subprocess

import torch
from safetensors.torch import load_file

from _train_helpers import PYTHON, TINY, make_image_folder, subprocess_env


def test_ddp_two_processes_match_one(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=10)
    common = ["train", *TINY, "--data", str(data), "--epochs", "1", "--no-save-model", "--ckpt-every", "0"]
    env = subprocess_env()
    one = subprocess.run([PYTHON, "-m", "mixerzoo.train", *common, "--output", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    # 2 processes x 2 accumulated micro-batches of 1 image (no_sync on the first) = 1 process with batches of 4
    two = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mixerzoo.train", *common, "--grad-accum-steps", "2",
                          "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "1 epochs" in two.stdout and two.stdout.count("val top-1") == 1  # only rank 0 prints

    def weights(run):
        ck = sorted((tmp_path / run / "checkpoints").glob("step_*.safetensors"))[-1]
        return {k: v for k, v in load_file(ck).items() if k.startswith("model.")}

    a, b = weights("one"), weights("two")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs between 1 and 2 processes")
    assert ck_step(tmp_path / "one") == ck_step(tmp_path / "two") == 4  # 18 train images, global batch 4


def ck_step(run):
    return int(sorted((run / "checkpoints").glob("step_*.json"))[-1].stem.split("_")[1])
