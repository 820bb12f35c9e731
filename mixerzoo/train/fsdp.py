"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the training loop: ``--fsdp`` under ``torchrun``.

Every process holds 1/N of each parameter, gradient and optimizer state instead of a full replica (DDP), so the
largest variants fit where a replica does not; the result is the one DDP gives (gradients are averaged over the
global batch in both). The model is sharded block by block (:func:`block_modules`), then at the root, as the
PyTorch FSDP2 tutorial does; a block's parameters are all-gathered just before its forward and backward.

Checkpoints and the exported ``model/`` folder keep their format: :func:`full_state` gathers the full (unsharded)
model and optimizer state onto rank 0 on the CPU (``torch.distributed.checkpoint.state_dict``), with the
optimizer state keyed by parameter index as ``torch.optim.Optimizer.state_dict`` keys it; :func:`load_full_state`
loads such a state into the sharded model and optimizer on every rank. So a checkpoint written under FSDP resumes
under DDP and the other way round (same number of processes).
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["block_modules", "full_model", "full_state", "is_sharded", "load_full_state", "lockstep", "no_sync",
           "shard_model"]

_log = logging.getLogger(__name__)
# sharded model -> a copy of it from before sharding whose parameters live on the meta device (no memory); rank 0
# fills it with the gathered weights for the export (save_pretrained needs plain tensors)
_SKELETONS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The units sharded one by one: the outermost modules whose class name ends in ``Block`` (the transformer /
    metaformer / residual blocks of every family here and of timm's models), in module order. Empty for a model
    without such classes: then the whole model is one unit."""
    names = [n for n, m in model.named_modules() if n and type(m).__name__.endswith("Block")]
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    return [model.get_submodule(n) for n in outer]


def is_sharded(model: nn.Module) -> bool:
    """True for a model sharded by :func:`shard_model` (an FSDP2 module)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` (already on ``device``) over the default process group with ``fully_shard``: every block of
    :func:`block_modules`, then the root. Returns the same module (its class becomes an FSDP subclass). Create the
    optimizer afterwards: it must hold the sharded parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    skeleton = _meta_copy(model)
    mesh = init_device_mesh(device.type, (world,))
    blocks = block_modules(model)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    _SKELETONS[model] = skeleton
    n = sum(p.numel() for p in model.parameters())
    _log.info("fsdp: %d parameters sharded over %d processes in %d blocks + the root", n, world, len(blocks))
    return model


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its parameters on the meta device (buffers and attributes copied as they are:
    non-persistent buffers are not in a state dict, so they must survive)."""
    memo: dict[int, Any] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                            for p in model.parameters()}
    return copy.deepcopy(model, memo)


@contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Skip the gradient reduction of the backward passes inside (accumulation micro-batches): DDP's ``no_sync``,
    FSDP2's ``set_requires_gradient_sync(False)``; a plain module needs nothing."""
    if is_sharded(model):
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
    else:
        with model.no_sync() if hasattr(model, "no_sync") else nullcontext():
            yield


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(model state dict, optimizer state dict) of the sharded ``model``, full and on the CPU on rank 0 (empty
    on the others). Every rank must call it (all-gathers). The optimizer state is keyed by parameter index in
    ``optimizer.param_groups`` order, as ``optimizer.state_dict()`` of an unsharded model is."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_sd = get_model_state_dict(model, options=_options(cpu_offload=True))
    if optimizer is None:
        return model_sd, None
    osd = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    names = _param_names(model)
    index = {names[id(p)]: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    local = optimizer.state_dict()  # param groups (hyper-parameters, index lists); its sharded state is unused
    state = {index[fqn]: dict(v) for fqn, v in osd.get("state", {}).items() if fqn in index}
    return model_sd, {"state": state, "param_groups": local["param_groups"]}


def load_full_state(model: nn.Module, model_sd: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None = None, optim_sd: dict[str, Any] | None = None) -> None:
    """Load full (unsharded) states, present on every rank, into the sharded ``model`` and ``optimizer`` (optimizer
    state keyed by parameter index, as :func:`full_state` writes it). Each rank cuts its own shards out of the full
    tensors, without communication (``torch.distributed.checkpoint``'s loader scatters, which gloo refuses for
    uneven shards)."""
    own = model.state_dict()
    model.load_state_dict({k: _shard_like(v, own[k]) if k in own else v for k, v in model_sd.items()})
    if optimizer is None or optim_sd is None:
        return
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # sorted: full_state gathers the state tensors in dict order, which must be the same on every rank (the order
    # of a safetensors file's keys is not)
    state = {int(i): {k: _shard_like(s[k], params[int(i)]) for k in sorted(s)}
             for i, s in sorted(optim_sd["state"].items(), key=lambda kv: int(kv[0]))}
    optimizer.load_state_dict({"state": state, "param_groups": optim_sd["param_groups"]})


def _shard_like(value: Any, like: Any) -> Any:
    """This rank's shard of the full tensor ``value``, placed as the DTensor ``like`` (``value`` itself when
    ``like`` is a plain tensor or the shapes differ: scalars such as an optimizer's step)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not (isinstance(like, DTensor) and torch.is_tensor(value) and tuple(value.shape) == tuple(like.shape)):
        return value
    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def full_model(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded) copy of the sharded ``model`` on the CPU on rank 0, None on the others (for the export
    and the caller's result). Every rank must call it."""
    model_sd, _ = full_state(model, None)
    if dist.get_rank() != 0:
        return None
    plain = _SKELETONS[model]
    plain.load_state_dict(model_sd, assign=True)  # the meta parameters become the gathered CPU tensors
    return plain.train(model.training)


def lockstep(loader: Iterable[Any], model: nn.Module) -> Iterator[Any]:
    """Iterate ``loader`` (``(x, y)`` batches), keeping the processes of a sharded ``model`` in step: every
    forward all-gathers, so a process whose evaluation shard ran out yields ``(one blank image, no labels)`` until
    every process is done (slice the output to ``len(y)``). A plain model iterates the loader as it is."""
    if not is_sharded(model):
        yield from loader
        return
    device = next(model.parameters()).device
    it = iter(loader)
    while True:
        batch = next(it, None)
        probe = torch.zeros(5, dtype=torch.int64)  # [has a batch, ndim, trailing dims (C, H, W)]: max over ranks
        if batch is not None:
            dims = batch[0].shape[1:]
            probe[0], probe[1] = 1, len(dims)
            probe[2:2 + len(dims)] = torch.tensor(dims)
        probe = probe.to(device)
        dist.all_reduce(probe, op=dist.ReduceOp.MAX)
        if int(probe[0]) == 0:
            return
        if batch is not None:
            yield batch
        else:
            shape = [int(s) for s in probe[2:2 + int(probe[1])]]
            yield torch.zeros(1, *shape), torch.zeros(0, dtype=torch.int64)
