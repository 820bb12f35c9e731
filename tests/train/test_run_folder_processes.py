"""Real `mixerzoo train` processes on one run folder: a second run refuses while the first holds the lock, and a
run SIGKILLed in the middle of a checkpoint write is cleaned up and resumed by a plain `--resume`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

from _train_helpers import PYTHON, TINY, make_image_folder, subprocess_env

LOCK = ".mixerzoo.lock"


def test_second_run_on_a_locked_folder_refuses(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=6)
    run = tmp_path / "run"
    flags = ["train", *TINY, "--data", str(data), "--epochs", "100000", "--no-save-model", "--output", str(run)]
    env = subprocess_env()
    # niced: the CPU goes to the second run, which must finish while the first is still training
    first = subprocess.Popen([PYTHON, "-m", "mixerzoo", *flags], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(19))
    try:
        deadline = time.monotonic() + 240  # a niced interpreter on a loaded 2-core machine can take a minute to start
        while not ((run / LOCK).exists() and (run / LOCK).read_text().endswith("\n")):  # written in full
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        holder = json.loads((run / LOCK).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = subprocess.run([PYTHON, "-m", "mixerzoo", *flags, "--overwrite"], env=env, capture_output=True,
                                text=True, timeout=120)
        err = second.stderr.strip()
        assert second.returncode == 2 and len(err.splitlines()) == 1, err
        assert f"in use by another run (PID {first.pid} on host {socket.gethostname()}" in err
        assert first.poll() is None  # the first run is untouched and still training
    finally:
        first.kill()
        first.wait()


# The real CLI in a real process; the one patch makes the second checkpoint's tensor file die half-written.
_KILLED_MID_WRITE = """
import os, signal, sys
from mixerzoo.hub import _io
real, calls = _io.atomic_write_bytes, []
def dying(path, data):
    if str(path).endswith(".safetensors"):
        calls.append(path)
        if len(calls) == 2:
            fd, _ = __import__("tempfile").mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                                    dir=os.path.dirname(path))
            os.write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, data)
_io.atomic_write_bytes = dying
from mixerzoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_checkpoint_write_then_plain_resume(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=6)  # batch 4 -> 2 steps/epoch
    run = tmp_path / "run"
    env = subprocess_env()
    flags = ["train", *TINY, "--data", str(data), "--epochs", "2", "--ckpt-every", "2", "--log-every", "1",
             "--output", str(run)]
    killed = subprocess.run([PYTHON, "-c", _KILLED_MID_WRITE, *flags], env=env, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ck = run / "checkpoints"
    assert json.loads((ck / "latest.json").read_text())["name"] == "step_0000002"
    torn = [p.name for p in ck.iterdir() if p.name.endswith(".tmp")]
    assert len(torn) == 1 and torn[0].startswith(".step_0000004.safetensors."), torn  # the end of epoch 2
    assert json.loads((run / LOCK).read_text())["pid"] > 0  # the dead run's lock is left behind

    resumed = subprocess.run([PYTHON, "-m", "mixerzoo", "train", "--output", str(run), "--resume"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "taking over the stale lock" in resumed.stderr and "removed 1 temp file" in resumed.stderr
    assert "resumed from step_0000002" in resumed.stderr
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")] and not (run / LOCK).exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if r["event"] == "step"]
    assert steps == [1, 2, 3, 4]  # no step written twice
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2]
    assert (run / "model" / "model.safetensors").is_file()
    assert json.loads((run / "recipe.json").read_text())["resume"] is True
