"""A model trained with a spec (mixers per stage, mixer options) is published from its run folder without repeating
the spec, and reloads from the (fake) Hub through plain ``timm.create_model`` with identical outputs."""

from __future__ import annotations

import json

import pytest
from _hub_helpers import run_client  # tests/hub is on sys.path (conftest)

pytestmark = [pytest.mark.hub, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def test_publish_run_folder_and_reload_through_timm(fakehub, hub_env, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    try:
        from _train_helpers import make_image_folder
    finally:
        sys.path.pop(0)
    from mixerzoo.train._cli import main

    data = make_image_folder(tmp_path / "data", n_per_class=4, size=32)
    run = tmp_path / "run"
    assert main(["train", "--model", "test_poolformer", "--mixers", "pooling,pooling,neighborhood,bra",
                 "--mixer-options", ";;kernel_size=3,small_input=pad_mask;n_win=1,topk=1,num_heads=2",
                 "--data", str(data), "--output", str(run), "--img-size", "32", "--batch-size", "4", "--workers",
                 "0", "--quiet", "--epochs", "1", "--lr", "1e-3", "--warmup-epochs", "0", "--aug", "none"]) == 0
    out = run_client(
        f"""
import timm, mixerzoo
from mixerzoo.cli import main
assert main(["publish", {str(run)!r}, "org/hybrid"]) == 0  # the run folder: its model/ is published
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
a = timm.create_model("hf-hub:org/hybrid", pretrained=True).eval()
b = timm.create_model("local-dir:{run / 'model'}", pretrained=True).eval()
with torch.no_grad():
    emit({{"same": bool(torch.equal(a(x), b(x))), "mixers": mixerzoo.plugins.required_mixers(a)}})
""",
        hub_env,
    )
    assert out == {"same": True, "mixers": {"bra": "mixerzoo", "neighborhood": "mixerzoo", "pooling": "mixerzoo"}}
    config = json.loads(fakehub.files("org/hybrid")["config.json"])
    assert config["model_args"]["mixers"] == ["pooling", "pooling", "neighborhood", "bra"]
