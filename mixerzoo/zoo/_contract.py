"""The backbone contract: timm's model API, written down as a Protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Backbone"]


@runtime_checkable
class Backbone(Protocol):
    """What every mixerzoo model provides (timm 1.0.31's contract: ``timm/models/_features.py``,
    ``tests/test_models.py``).

    ``feature_info`` is a list of ``dict(num_chs=int, reduction=int, module=str)``, one per stage (or per
    block for isotropic models), with ``module`` a real submodule path.
    """

    num_classes: int
    in_chans: int
    num_features: int
    head_hidden_size: int
    feature_info: list[dict[str, Any]]
    grad_checkpointing: bool

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor: ...

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]: ...

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]: ...

    def get_classifier(self) -> Any: ...

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...

    def no_weight_decay(self) -> set[str]: ...

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]: ...
