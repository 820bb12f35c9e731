"""The host, once: timm's model contract for the hierarchical families, written in one place.

A family's model class derives from :class:`StagedBackbone`, builds ``stem``, ``stages`` (an ``nn.Sequential`` of
modules with a ``grad_checkpointing`` flag, usually :class:`Stage`) and ``head`` (usually :class:`NormPoolHead`),
calls :meth:`StagedBackbone._setup` before and :meth:`StagedBackbone._finish` after, and overrides a hook only
where it really differs:

* ``_embed(x)``: the stem (a family may change the memory format or the layout here);
* ``_features_out(x)``: the body's output → the ``forward_features`` layout (NHWC bodies permute to NCHW);
* ``_intermediates_out(x, full)``: the final output of ``forward_intermediates`` (``full``: every stage ran;
  a final norm may apply only then);
* ``_intermediate(i, x, norm, last, output_fmt)``: one ``forward_intermediates`` output (per-output norms);
* ``_prune_norm(max_index, prune_norm)``: what ``prune_intermediate_layers`` does to the final norm;
* class attributes ``output_fmts`` (what ``forward_intermediates`` accepts), ``init_types`` (the module types that
  get timm's truncated-normal init), ``no_weight_decay_suffixes``, ``stem_pattern`` and ``final_norm_pattern``
  (``group_matcher``).

Hooks are plain methods (TorchScript compiles the overrides), never string ``getattr``. The state-dict names stay
the families' own: the host only reads ``stem``, ``stages``, ``head`` and the optional ``out_norms``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from mixerzoo.zoo._blocks import init_weights, trunc_normal_
from mixerzoo.zoo._checks import check_input

__all__ = ["LinearHeadBackbone", "NormPoolHead", "Stage", "StagedBackbone", "strict_filter"]


class Stage(nn.Module):
    """``downsample`` then ``blocks`` (an ``nn.Sequential``), with activation checkpointing of the blocks."""

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class NormPoolHead(nn.Module):
    """``norm`` on the ``[B, C, H, W]`` map → global pool → dropout → Linear (keys ``norm.*``, ``fc.*``).

    ``channels_last_norm=True`` applies ``norm`` over the channel axis of an NHWC view (a LayerNorm);
    otherwise ``norm`` takes the NCHW map as it is (GroupNorm, BatchNorm2d, LayerNorm2d).
    """

    def __init__(
        self,
        norm: nn.Module,
        dim: int,
        num_classes: int,
        global_pool: str,
        drop_rate: float,
        *,
        channels_last_norm: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last_norm = channels_last_norm
        self.norm = norm
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_features: int, num_classes: int, global_pool: str | None, ref: Tensor) -> None:
        """A new classifier (``num_classes == 0``: none) on ``ref``'s device and dtype; a new pool if given."""
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        fc = nn.Linear(num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else None
        self.fc = (fc if fc is not None else nn.Identity()).train(self.training)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.channels_last_norm:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = self.norm(x)
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)


class StagedBackbone(nn.Module):
    """timm's contract for a ``stem → stages → head`` backbone; see the module docstring for the hooks."""

    output_fmts: tuple[str, ...] = ("NCHW",)
    init_types: tuple[type, ...] = (nn.Linear,)
    no_weight_decay_suffixes: tuple[str, ...] = ()
    stem_pattern: str = r"^stem"
    body_name: str = "stages"  # the stage container's attribute (group_matcher patterns; see _body)
    final_norm_pattern: str | None = None  # group_matcher: norms that belong after the last block

    def _setup(self, *, in_chans: int, num_classes: int, global_pool: str, drop_rate: float, num_features: int) -> None:
        """The attributes timm reads; call first in ``__init__`` (after ``super().__init__()``)."""
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = num_features
        self.grad_checkpointing = False

    def _finish(self, dtype: torch.dtype | None) -> None:
        """Weight init (skipped on meta) and the requested dtype; call last in ``__init__``."""
        init_weights(self, self._init_weights)
        if dtype is not None:
            self.to(dtype=dtype)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, self.init_types):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- hooks -------------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def _features_out(self, x: Tensor) -> Tensor:
        return x

    def _intermediates_out(self, x: Tensor, full: bool) -> Tensor:
        return self._features_out(x)

    def _intermediate(self, i: int, x: Tensor, norm: bool, last: bool, output_fmt: str) -> Tensor:
        return x

    def _prune_norm(self, max_index: int, prune_norm: bool) -> None:
        if prune_norm:
            self.head.norm = nn.Identity()

    def _body(self) -> nn.Sequential:
        """The stage container (a family whose container is not ``stages`` overrides this, ``_set_body`` and
        ``forward_features``: TorchScript compiles ``forward_features``, which reads ``self.stages`` directly)."""
        return self.stages

    def _set_body(self, body: nn.Sequential) -> None:
        self.stages = body

    # ---- timm contract -----------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        suffixes = self.no_weight_decay_suffixes
        return {n for n, _ in self.named_parameters() if suffixes and n.endswith(suffixes)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        b = self.body_name
        fine: list[Any] = [(rf"^{b}\.(\d+)\.downsample", (0,)), (rf"^{b}\.(\d+)\.blocks\.(\d+)", None)]
        if self.final_norm_pattern is not None:
            fine.append((self.final_norm_pattern, (99999,)))
        return {"stem": self.stem_pattern, "blocks": rf"^{b}\.(\d+)" if coarse else fine}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self._body():
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(self.num_features, num_classes, global_pool, next(self.parameters()))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs for the stages in ``indices`` (timm's ``forward_intermediates``)."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        if output_fmt not in self.output_fmts:
            fmts = " and ".join(repr(f) for f in self.output_fmts) + (" only" if len(self.output_fmts) == 1 else "")
            raise ValueError(f"output_fmt={output_fmt!r}: {type(self).__name__} supports {fmts}")
        body = self._body()
        take, max_index = feature_take_indices(len(body), indices)
        intermediates = []
        x = self._embed(x)
        last = len(body) - 1
        stages = body if torch.jit.is_scripting() or not stop_early else body[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self._intermediate(i, x, norm, i == last, output_fmt))
        if intermediates_only:
            return intermediates
        return self._intermediates_out(x, len(stages) == len(body)), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        body = self._body()
        take, max_index = feature_take_indices(len(body), indices)
        self._set_body(body[: max_index + 1])
        if getattr(self, "out_norms", None) is not None:
            self.out_norms = self.out_norms[: max_index + 1]
        self._prune_norm(max_index, prune_norm)
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        x = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self._features_out(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class LinearHeadBackbone(StagedBackbone):
    """A :class:`StagedBackbone` whose classifier is a bare ``head`` Linear (keys ``head.weight``/``head.bias``)
    after an average pool and ``head_drop``, as in timm's Swin and PVTv2; ``global_pool`` is ``'avg'`` or ``''``."""

    def _check_pool(self, global_pool: str) -> None:
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}: {type(self).__name__} supports 'avg' or ''")

    def _prune_norm(self, max_index: int, prune_norm: bool) -> None:
        pass  # no final norm unless the family has one (then it overrides this)

    def _make_head(self, dim: int, num_classes: int, drop_rate: float) -> None:
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        ref = next(self.parameters())
        fc = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else None
        self.head = (fc if fc is not None else nn.Identity()).train(self.training)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def strict_filter(
    out: dict[str, Tensor], model: nn.Module, host: str, origin: Mapping[str, str] | None = None
) -> dict[str, Tensor]:
    """The shared tail of every official-checkpoint filter: a renamed key that matches nothing in ``model`` is an
    error naming (up to 8 of) the checkpoint's own keys (``origin`` maps renamed → original)."""
    expected = set(model.state_dict())
    unknown = sorted((origin or {}).get(k, k) for k in set(out) - expected)
    if unknown:
        raise KeyError(f"checkpoint_filter: {len(unknown)} checkpoint keys match nothing in {host}: {unknown[:8]}")
    return out
