"""The run folder under faults: locking, refusing to clobber a run, --overwrite, resume housekeeping, damaged
checkpoints, disk full. In-process and fast; the real-process cases are in test_run_folder_processes.py."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket

import pytest
import torch
from torch import nn

from mixerzoo.train import RecipeError, build_recipe
from mixerzoo.train import checkpoint as ckpt
from mixerzoo.train import rundir
from mixerzoo.train._cli import main, one_line_error

from _train_helpers import TINY, make_image_folder


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_run(out):
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_0000004.json").write_text("{}")
    (out / "checkpoints" / "step_0000004.safetensors").write_bytes(b"x")
    (out / "checkpoints" / "latest.json").write_text('{"name": "step_0000004", "step": 4}')
    (out / "metrics.jsonl").write_text('{"event": "epoch", "epoch": 1, "global_step": 4}\n')
    (out / "recipe.json").write_text(json.dumps(build_recipe({"model": "test_poolformer"}).to_dict()))
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "keep.txt").write_text("mine too")
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_new_run_refuses_existing_run_and_bad_data_loses_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    before = _fake_run(out)
    data = make_image_folder(tmp_path / "d")
    err = _err(capsys, ["train", *TINY, "--data", str(data), "--output", str(out)])
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    # the data typo is found before the folder is touched, even with --overwrite
    err = _err(capsys, ["train", *TINY, "--data", str(tmp_path / "typo"), "--output", str(out), "--overwrite"])
    assert "typo" in err
    assert _snapshot(out) == before


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    (out / "checkpoints" / ".step_0000006.safetensors.abc123.tmp").write_bytes(b"torn")
    lock = rundir.claim(build_recipe({"model": "test_poolformer", "output": str(out), "overwrite": True}))
    lock.release()
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["checkpoints/keep.txt", "notes.txt", "recipe.json"]  # recipe.json: the new run's
    assert json.loads((out / "recipe.json").read_text())["overwrite"] is True
    with pytest.raises(RecipeError, match="exclude each other"):
        build_recipe({"resume": True, "overwrite": True})


def test_lock_refuses_live_holder_and_takes_over_stale(tmp_path, caplog):
    lock_path = tmp_path / rundir.LOCK_NAME
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": "t0"}
    lock_path.write_text(json.dumps(live))
    with pytest.raises(RecipeError) as e:
        rundir.RunLock(tmp_path).acquire()
    msg = str(e.value)
    assert f"PID {os.getppid()}" in msg and socket.gethostname() in msg and "\n" not in msg
    lock_path.write_text(json.dumps({"pid": 1234, "host": "elsewhere.example", "started": "t0"}))
    with pytest.raises(RecipeError, match="PID 1234 on host elsewhere.example"):
        rundir.RunLock(tmp_path).acquire()
    dead = _dead_pid()
    lock_path.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "t0"}))
    with caplog.at_level(logging.WARNING), rundir.RunLock(tmp_path) as lock:
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
        assert lock.held
    assert "stale lock" in caplog.text and str(dead) in caplog.text
    assert not lock_path.exists()


def test_resume_refuses_changed_recipe_and_model(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    base = {"model": "test_poolformer", "output": str(out), "resume": True}
    with pytest.raises(RecipeError, match=r"cannot change: lr=0.5 \(the run has 0.002\)"):
        rundir.claim(build_recipe({**base, "lr": 0.5}))
    with pytest.raises(RecipeError, match=r"model='test_vit' \(the run has 'test_poolformer'\)"):
        rundir.claim(build_recipe({**base, "model": "test_vit"}))
    rundir.claim(build_recipe({**base, "workers": 0, "quiet": True})).release()  # runtime keys may change


def _tiny_ckpts(tmp_path, steps=(2, 4)):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in steps:
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        ckpt.save_checkpoint(tmp_path, step=step, model=model, optimizer=opt, state={"global_step": step})
    return model, opt


@pytest.mark.parametrize("damage", ["truncate", "flip", "latest_json", "missing_json"])
def test_damaged_latest_checkpoint_falls_back(tmp_path, caplog, damage):
    _tiny_ckpts(tmp_path)
    st = tmp_path / "step_0000004.safetensors"
    if damage == "truncate":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    elif damage == "flip":  # same size, one bit of tensor data flipped: only the sha256 sees it
        raw = bytearray(st.read_bytes())
        raw[-3] ^= 0x40
        st.write_bytes(bytes(raw))
    elif damage == "latest_json":
        (tmp_path / "latest.json").write_text('{"name": ')
    else:
        (tmp_path / "step_0000004.json").unlink()
    with caplog.at_level(logging.WARNING):
        tensors, meta = ckpt.load_checkpoint(tmp_path)
    if damage == "latest_json":  # both checkpoints intact (verified): the newest one is used
        assert meta["_loaded"] == "step_0000004" and "latest.json' is malformed" in caplog.text
        return
    assert meta["_loaded"] == "step_0000002" and meta["state"]["global_step"] == 2
    assert "step_0000004" in caplog.text and "falling back to" in caplog.text
    moved = ckpt.set_aside_newer(tmp_path, meta["_loaded"])
    assert ckpt.checkpoint_names(tmp_path) == ["step_0000002"] and all(p.suffix == ".damaged" for p in moved)
    assert ckpt.latest_checkpoint(tmp_path) == "step_0000002"


def test_no_intact_checkpoint_and_wrong_model_are_one_line(tmp_path):
    model, opt = _tiny_ckpts(tmp_path, steps=(2,))
    tensors, meta = ckpt.load_checkpoint(tmp_path)
    with pytest.raises(RecipeError, match=r"does not fit Linear \(.*of another shape") as e:
        ckpt.restore(tensors, meta, model=nn.Linear(3, 5))
    assert "\n" not in str(e.value)
    (tmp_path / "step_0000002.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(RecipeError, match="no intact checkpoint") as e:
        ckpt.load_checkpoint(tmp_path)
    assert "step_0000002.safetensors" in str(e.value) and "\n" not in str(e.value)


def test_resume_housekeeping_temp_files_and_metrics(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    temps = [out / "checkpoints" / ".step_0000006.safetensors.x1y2.tmp", out / ".curves.png.tmp.png",
             out / ".metrics.jsonl.abcd.tmp"]
    for t in temps:
        t.write_bytes(b"0" * 100)
    (out / ".unrelated.tmp").write_bytes(b"not ours")
    removed = rundir.clean_temp_files(out)
    assert sorted(removed) == sorted(temps) and (out / ".unrelated.tmp").exists()
    from mixerzoo.train.loop import _truncate_metrics

    recs = [{"event": "step", "global_step": s} for s in (1, 2, 3, 4)] + [{"event": "epoch", "global_step": 4}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"event": "st')
    _truncate_metrics(out / "metrics.jsonl", 2)
    assert [json.loads(x)["global_step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_oserror_is_one_line_with_path():
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/checkpoints/step_0000004.safetensors")
    assert one_line_error(err) == "No space left on device: '/runs/x/checkpoints/step_0000004.safetensors'"
    assert one_line_error(KeyError("bug")) is None


def test_disk_full_mid_run_is_one_line_and_keeps_previous_checkpoint(capsys, tmp_path, monkeypatch):
    from mixerzoo.hub import _io

    real = _io.atomic_write_bytes
    calls = {"n": 0}

    def full_disk(path, data):
        if str(path).endswith(".safetensors"):
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint: half written, then write() fails (it names no file)
                with _io.atomic_path(path) as tmp:
                    tmp.write_bytes(data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(_io, "atomic_write_bytes", full_disk)
    data = make_image_folder(tmp_path / "d", n_per_class=6)
    out = tmp_path / "run"
    err = _err(capsys, ["train", *TINY, "--data", str(data), "--epochs", "2", "--ckpt-every", "1",
                        "--no-save-model", "--output", str(out)])
    dest = out / "checkpoints" / "step_0000002.safetensors"
    assert err == f"mixerzoo train: error: No space left on device: {str(dest)!r}"
    assert ckpt.latest_checkpoint(out / "checkpoints") == "step_0000001"
    ckpt.load_checkpoint(out / "checkpoints")  # intact, verified
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not (out / rundir.LOCK_NAME).exists()  # released on the error


@pytest.mark.parametrize("damage", ["truncated", "pickle_only"])
def test_hub_errors_through_eval_and_finetune_are_one_line(capsys, tmp_path, damage):
    import mixerzoo
    from mixerzoo.cli import main as mixerzoo_main
    from mixerzoo.hub import save_pretrained

    folder = tmp_path / damage
    save_pretrained(mixerzoo.create_model("test_poolformer", num_classes=10), folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:  # the hub's UnsafeCheckpointError (a HubError, not an OSError or ValueError)
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    for cmd in (["eval", f"local-dir:{folder}", "--workers", "0"],
                ["finetune", f"local-dir:{folder}", "--workers", "0", "--output", str(tmp_path / "ft")]):
        assert mixerzoo_main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"mixerzoo {cmd[0]}: error: ") and str(folder) in err
    assert not (tmp_path / "ft").exists()  # the failed fine-tune created nothing
