"""--fsdp: FSDP2 (fully_shard per block) in 2 gloo CPU processes trains to the weights and optimizer state of 1 process
on the same global batch, writes checkpoints and a model/ folder in the unsharded format, and resumes from them."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from mixerzoo.train import RecipeError
from mixerzoo.train._cli import recipe_from_args
from mixerzoo.train.fsdp import block_modules

from _train_helpers import TINY, make_image_folder

# gradient clipping and accumulation run on the shards too; 18 train images, global batch 4: 4 steps, a checkpoint
# after step 2 (mid-epoch) and one at the end
FLAGS = [*TINY, "--epochs", "1", "--ckpt-every", "2", "--clip-grad", "0.5", "--fsdp"]


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.GELU(), nn.Linear(5, 3))


def _worker(rank: int, init: str, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        from mixerzoo.train import fsdp
        from mixerzoo.train.loop import _Dist, evaluate, fit

        run = Path(out) / "two"
        # 2 processes x 2 accumulated micro-batches of 1 image = 1 process with batches of 4
        flags = [*FLAGS, "--data", data, "--grad-accum-steps", "2", "--output", str(run)]
        fit(recipe_from_args(flags))
        if rank == 0:  # interrupted after step 2: latest names the mid-epoch checkpoint
            (run / "checkpoints" / "step_0000004.safetensors").rename(Path(out) / "uninterrupted.safetensors")
            (run / "checkpoints" / "latest.json").write_text(json.dumps({"name": "step_0000002", "step": 2}))
        dist.barrier()
        fit(recipe_from_args([*flags, "--resume"]))
        # evaluation shards of unequal length (rank 1 has none): every forward of a sharded model all-gathers,
        # so the processes stay in step, and the blank batches count for nothing
        net = fsdp.shard_model(_tiny_net(), torch.device("cpu"))
        g = torch.Generator().manual_seed(rank)
        loader = [(torch.randn(2, 3, generator=g), torch.tensor([0, 2]))] * 3 if rank == 0 else []
        res = evaluate(net, loader, torch.device("cpu"), d=_Dist(rank=rank, world=2))
        torch.save({"eval": res, "x": loader[0][0] if loader else None}, f"{out}/eval.{rank}")
    finally:
        dist.destroy_process_group()


def test_fsdp_two_processes_match_one_and_resume(tmp_path, caplog):
    data = str(make_image_folder(tmp_path / "data", n_per_class=10))
    # fork, not spawn: the children need no second import of torch and timm (they train single-threaded, as
    # DataLoader workers do, so the parent's thread pools do not matter)
    mp.start_processes(_worker, args=(f"file://{tmp_path / 'rdzv'}", data, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    from mixerzoo.train.loop import fit

    with caplog.at_level(logging.INFO, logger="mixerzoo.train.loop"):  # one process: --fsdp changes nothing
        fit(recipe_from_args([*FLAGS, "--data", data, "--no-save-model", "--output", str(tmp_path / "one")]))
    assert "fsdp: one process, nothing to shard" in caplog.text

    def ckpt(run: str, step: int) -> dict[str, torch.Tensor]:
        t = load_file(tmp_path / run / "checkpoints" / f"step_{step:07d}.safetensors")
        return {k: v for k, v in t.items() if not k.startswith("rng.")}

    one = ckpt("one", 4)
    assert sum(k.startswith("optim.") for k in one) > 20  # AdamW moments, keyed by parameter index
    for name, two in (("step 2", ckpt("two", 2)), ("resumed", ckpt("two", 4)),
                      ("uninterrupted", {k: v for k, v in load_file(tmp_path / "uninterrupted.safetensors").items()
                                         if not k.startswith("rng.")})):
        want = ckpt("one", 2) if name == "step 2" else one
        assert two.keys() == want.keys(), name
        for k, v in want.items():
            torch.testing.assert_close(two[k].float(), v.float(), rtol=1e-5, atol=1e-5, msg=f"{name}: {k} differs")
    exported = load_file(tmp_path / "two" / "model" / "model.safetensors")  # the full model, written by rank 0
    assert len(exported) > 10
    for k, v in exported.items():
        torch.testing.assert_close(v, one[f"model.{k}"], rtol=1e-5, atol=1e-5, msg=f"model/: {k} differs")

    parts = [torch.load(tmp_path / f"eval.{r}", weights_only=True) for r in (0, 1)]
    net = _tiny_net()
    out = net(parts[0]["x"])
    want_loss = nn.functional.cross_entropy(out, torch.tensor([0, 2])).item()
    for p in parts:
        assert p["eval"]["count"] == 6
        assert p["eval"]["loss"] == pytest.approx(want_loss, rel=1e-5)


def test_fsdp_refuses_ema_and_shards_per_block():
    with pytest.raises(RecipeError, match="fsdp and ema exclude each other"):
        recipe_from_args([*TINY, "--fsdp", "--ema"])
    import mixerzoo

    model = mixerzoo.create_model("test_poolformer", num_classes=2)
    blocks = block_modules(model)
    assert [type(b).__name__ for b in blocks] == ["PoolFormerBlock"] * 4
    assert block_modules(_tiny_net()) == []  # no blocks: the root is the only unit
