"""Synchronised BatchNorm for DDP: batch statistics over the global batch, so N processes train like one.

On CUDA this is ``timm.layers.convert_sync_batchnorm`` (``torch.nn.SyncBatchNorm``, timm's ``BatchNormAct2d``
included). ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so on CPU (gloo) the converted layers compute the same
thing with :class:`_SyncBatchNormFn`: per-channel sums, sums of squares and counts are all-reduced in the forward
pass, the two gradient sums in the backward pass (Ioffe & Szegedy, arXiv:1502.03167, with the statistics taken
over all processes' samples). The weight and bias gradients stay local sums: DDP averages them like any other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["convert_sync_batchnorm", "has_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    """True when ``model`` has a trainable BatchNorm layer (frozen BN is not a ``_BatchNorm``)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm layer synchronised across the default process group.

    Parameters and buffers are shared with the original layers (an optimizer built before stays valid); the
    state-dict keys do not change, so checkpoints and exported weights load into plain BatchNorm.
    """
    if device.type != "cpu":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    # DDP refuses nn.SyncBatchNorm in CPU modules, so the CPU layers keep their class, with a synchronising
    # subclass swapped in (attributes, parameters and buffers stay where they are)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (_SyncMixin, nn.SyncBatchNorm)):
            m.__class__ = _sync_class(type(m))
    return model


class _SyncMixin:
    """Forward of a BatchNorm layer (or timm's BatchNormAct2d: BN, then drop and act) with global statistics in
    training under a process group of more than one process; plain batch norm otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_sync(self, x):  # type: ignore[arg-type]
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)  # type: ignore[attr-defined]
        y = _sync_bn(self, x)
        if _is_norm_act(self):
            y = self.act(self.drop(y))  # type: ignore[attr-defined]
        return y


_CLASSES: dict[type, type] = {}


def _sync_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Sync{cls.__name__}", (_SyncMixin, cls), {"__module__": __name__})
    return _CLASSES[cls]


def _is_norm_act(m: Any) -> bool:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(m, BatchNormAct2d)


def _needs_sync(bn: Any, x: torch.Tensor) -> bool:
    return (bn.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def _sync_bn(bn: Any, x: torch.Tensor) -> torch.Tensor:
    factor = 0.0
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return _SyncBatchNormFn.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, factor,
                                  dist.group.WORLD)


class _SyncBatchNormFn(torch.autograd.Function):
    """Batch norm with statistics over every process's batch (training mode)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, eps: float, factor: float,
                group: Any) -> torch.Tensor:
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        x64 = x.detach().double()
        stats = torch.cat([x64.sum(dims), (x64 * x64).sum(dims), x64.new_tensor([x.numel() / c])])
        dist.all_reduce(stats, group=group)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1.0 - factor).add_(factor * mean.to(running_mean.dtype))
                unbiased = var * n / (n - 1).clamp_min(1.0)
                running_var.mul_(1.0 - factor).add_(factor * unbiased.to(running_var.dtype))
        invstd = torch.rsqrt(var + eps)
        xhat = (x64 - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.detach().double().view(shape)
        if bias is not None:
            y = y + bias.detach().double().view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.group, ctx.n, ctx.has_bias = group, n, bias is not None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        xhat, invstd, weight = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [0, *range(2, xhat.dim())]
        shape = [1, c] + [1] * (xhat.dim() - 2)
        g64 = gy.double()
        sum_g = g64.sum(dims)
        sum_gx = (g64 * xhat).sum(dims)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_g, sum_gx])
            dist.all_reduce(sums, group=ctx.group)
            scale = invstd if weight is None else invstd * weight.detach().double()
            grad_x = ((g64 - (sums[:c] / ctx.n).view(shape) - xhat * (sums[c:] / ctx.n).view(shape))
                      * scale.view(shape)).to(gy.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = sum_gx.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = sum_g.to(gy.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None
