"""timm's own scripts run on ``mz_`` models through the launcher (``python -m mixerzoo.timm_script`` and
``mixerzoo timm``) without editing them.

timm's scripts are not in its wheel and there is no network, so the always-on test runs a stand-in written here that
does what timm's ``validate.py`` does with timm's public API (and does not import mixerzoo). Set
``MIXERZOO_TIMM_SCRIPTS`` to a folder holding timm's real ``validate.py`` (a checkout of
huggingface/pytorch-image-models) to also run the real script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mixerzoo.cli import main as cli_main
from mixerzoo.timm_script import ScriptError, run_script
from mixerzoo.timm_script import main as launcher_main

ROOT = Path(__file__).resolve().parents[2]

# What timm's validate.py does, through timm's public API only: create_model by name, a checkpoint, the data config
# resolved from the model, timm's eval transform, an ImageFolder, a forward, top-1; results as JSON.
VALIDATE = '''
import argparse, json, sys
from pathlib import Path

import torch
import timm
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.models import load_checkpoint

import helper_next_to_script  # found because sys.path[0] is this script's folder, as for `python validate.py`

p = argparse.ArgumentParser()
p.add_argument("--data-dir")
p.add_argument("--split", default="validation")
p.add_argument("--model", required=True)
p.add_argument("--checkpoint", default="")
p.add_argument("--num-classes", type=int, default=None)
p.add_argument("--img-size", type=int, default=None)
p.add_argument("--results-file", default="")
p.add_argument("--exit-code", type=int, default=0)
args = p.parse_args()
model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
if args.checkpoint:
    load_checkpoint(model, args.checkpoint)
config = resolve_data_config(vars(args), model=model)
transform = create_transform(**config)
dataset = create_dataset("", root=args.data_dir, split=args.split, transform=transform)
loader = torch.utils.data.DataLoader(dataset, batch_size=4)
model.eval()
correct = total = 0
with torch.no_grad():
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += y.numel()
result = {"model": args.model, "top1": 100.0 * correct / total, "count": total,
          "input_size": list(config["input_size"]), "argv0": sys.argv[0], "path0": sys.path[0],
          "helper": helper_next_to_script.NAME}
Path(args.results_file).write_text(json.dumps(result))
sys.exit(args.exit_code)
'''


def _image_folder(root: Path, n: int = 3, size: int = 24) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("timm_scripts")
    scripts = tmp / "scripts"
    scripts.mkdir()
    (scripts / "validate.py").write_text(VALIDATE)
    (scripts / "helper_next_to_script.py").write_text("NAME = 'helper'\n")
    data = _image_folder(tmp / "data" / "validation")
    import timm

    import mixerzoo  # noqa: F401

    model = timm.create_model("mz_test_poolformer", num_classes=2)
    torch.save({"state_dict": model.state_dict()}, tmp / "ck.pth")
    return {"tmp": tmp, "script": scripts / "validate.py", "data": data.parent, "ckpt": tmp / "ck.pth"}


def _args(case: dict[str, Path], results: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(case["data"]), "--model", "mz_test_poolformer", "--checkpoint", str(case["ckpt"]),
            "--num-classes", "2", "--img-size", "32", "--results-file", str(results), *extra]


def test_python_m_runs_a_timm_script_that_does_not_import_mixerzoo(case):
    results = case["tmp"] / "sub.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mixerzoo.timm_script", str(case["script"]), *_args(case, results)],
                          cwd=case["tmp"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(results.read_text())
    assert res["model"] == "mz_test_poolformer" and res["count"] == 6 and res["input_size"] == [3, 32, 32]
    assert res["argv0"] == str(case["script"]) and res["path0"] == str(case["script"].parent)
    assert res["helper"] == "helper"


def test_mixerzoo_timm_subcommand_passes_arguments_and_exit_status(case):
    results = case["tmp"] / "cli.json"
    argv, path = sys.argv[:], sys.path[:]
    assert cli_main(["timm", str(case["script"]), *_args(case, results)]) == 0
    assert json.loads(results.read_text())["count"] == 6
    assert (sys.argv, sys.path) == (argv, path)  # restored for the caller
    # the script's own exit status comes back; flags that look like mixerzoo's go to the script
    assert run_script(str(case["script"]), _args(case, results, "--exit-code", "3")) == 3


@pytest.mark.parametrize("bad, message", [("missing.py", "does not exist"), ("notes.txt", "must be a .py file")])
def test_bad_script_is_one_line_and_exit_2(case, capsys, bad, message):
    path = str(case["tmp"] / bad)
    assert launcher_main([path, "--model", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixerzoo.timm_script: error: ") and message in err and "\n" not in err
    assert cli_main(["timm", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixerzoo timm: error: ") and message in err and "\n" not in err
    with pytest.raises(ScriptError, match=message):
        run_script(path)


def test_script_errors_keep_their_traceback(case, capsys):
    broken = case["tmp"] / "broken.py"
    broken.write_text("raise ValueError('from the script')\n")
    assert cli_main(["timm", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: from the script" in err


@pytest.mark.skipif(not os.environ.get("MIXERZOO_TIMM_SCRIPTS"), reason="set MIXERZOO_TIMM_SCRIPTS to a folder "
                    "with timm's validate.py (a pytorch-image-models checkout) to run the real script")
def test_real_timm_validate_py(case):
    script = Path(os.environ["MIXERZOO_TIMM_SCRIPTS"]) / "validate.py"
    results = case["tmp"] / "real.json"
    code = run_script(str(script), ["--data-dir", str(case["data"]), "--split", "validation", "--model",
                                    "mz_test_poolformer", "--checkpoint", str(case["ckpt"]), "--num-classes", "2",
                                    "--img-size", "32", "-b", "4", "--workers", "0", "--device", "cpu",
                                    "--results-file", str(results), "--results-format", "json"])
    assert code == 0
    res = json.loads(results.read_text())
    assert res["model"] == "mz_test_poolformer" and res["img_size"] == 32
