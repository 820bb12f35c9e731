"""SyncBatchNorm on CPU: 2 gloo processes, each with half of a batch, compute what one process computes on the
whole batch (outputs, input/weight gradients, running statistics), and `fit` of a BatchNorm family in 2 processes
ends with the weights of 1 process."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mixerzoo.train.syncbn import convert_sync_batchnorm, has_batchnorm


def _net() -> nn.Module:
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1), BatchNormAct2d(5))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 5, 5, generator=g) * 2 + 1, torch.randn(6, 5, 3, 3, generator=g)


def _fit(data: str, out: str) -> dict[str, torch.Tensor]:
    from mixerzoo.train._cli import recipe_from_args
    from mixerzoo.train.loop import fit

    from _train_helpers import TINY

    flags = [*TINY, "--model", "test_resnet_cbam", "--data", data, "--epochs", "1", "--no-save-model", "--output", out]
    return {k: v.detach().clone() for k, v in fit(recipe_from_args(flags)).model.state_dict().items()}


def _worker(rank: int, init: str, out: str, data: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        weights = _fit(data, f"{out}.run")  # rank 0 writes the run; rank 1 only trains
        net = convert_sync_batchnorm(_net(), torch.device("cpu"))
        x, r = _batch()
        xs = x[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
        y = net(xs)
        (y * r[rank * 3:(rank + 1) * 3]).sum().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        for g in grads:  # the sum objective: add the local parameter gradients
            dist.all_reduce(g)
        torch.save({"y": y.detach(), "gx": xs.grad, "grads": grads, "weights": weights,
                    "buffers": [b.clone() for b in net.buffers()]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_sync_bn_matches_one_process(tmp_path):
    from _train_helpers import make_image_folder

    data = str(make_image_folder(tmp_path / "data", n_per_class=6))
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rdzv'}", str(tmp_path / "res"), data), nprocs=2, join=True)
    net = _net()
    assert has_batchnorm(net)
    x, r = _batch()
    x.requires_grad_(True)
    y = net(x)
    (y * r).sum().backward()
    parts = [torch.load(tmp_path / f"res.{k}", weights_only=True) for k in (0, 1)]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["gx"] for p in parts]), x.grad, rtol=1e-4, atol=1e-5)
    for got, want in zip(parts[0]["grads"], [p.grad for p in net.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(parts[0]["buffers"], list(net.buffers())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # without a process group the converted layers are plain batch norm (eval, single process)
    single = convert_sync_batchnorm(_net(), torch.device("cpu"))
    torch.testing.assert_close(single(x.detach()), _net()(x.detach()))
    # the training loop: BatchNorm layers are synchronised under DDP, so 2 processes end where 1 process ends
    one = _fit(data, str(tmp_path / "one"))
    for k, v in one.items():
        torch.testing.assert_close(parts[0]["weights"][k].float(), v.float(), rtol=1e-4, atol=1e-5,
                                   msg=f"{k} differs between 1 and 2 processes")
