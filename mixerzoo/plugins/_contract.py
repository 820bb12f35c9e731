"""The mixer contract (version 1).

A mixer is an ``nn.Module`` class that a backbone builds by registry name. It declares:

* ``layout``: the tensor layout its ``forward`` takes and returns — ``"nchw"`` ``(B, C, H, W)``,
  ``"nhwc"`` ``(B, H, W, C)`` or ``"nlc"`` ``(B, N, C)`` (tokens; no spatial structure needed);
* ``kind``: ``"mixer"`` (a token mixer: a MetaFormer/ViT block's first sub-layer, used as
  ``x + mixer(norm(x))``) or ``"gate"`` (a CNN gate: multiplies its input by an attention map inside a
  residual branch, ``out = gate(branch(x))``);
* optionally ``contract_version`` (default 1) and ``needs_hw`` (an ``nlc`` mixer that also wants the
  spatial size is called as ``forward(x, hw=(H, W))``).

Its constructor is ``(dim, *, num_heads=None, **options)`` with every option spelled out as a
keyword argument, so an unknown option raises ``TypeError``. ``forward`` preserves the shape. A mixer
has a pure-PyTorch path that runs on CPU, on the meta device, under ``torch.compile`` and ``torch.fx``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["CONTRACT_VERSION", "KINDS", "LAYOUTS", "TokenMixer", "check_mixer_class"]

CONTRACT_VERSION = 1
LAYOUTS = ("nchw", "nhwc", "nlc")
KINDS = ("mixer", "gate")


@runtime_checkable
class TokenMixer(Protocol):
    """What a mixer plugin class provides (see the module docstring)."""

    layout: ClassVar[Literal["nchw", "nhwc", "nlc"]]
    kind: ClassVar[Literal["mixer", "gate"]]

    def __init__(self, dim: int, *, num_heads: int | None = None, **options: Any) -> None: ...

    def forward(self, x: Tensor) -> Tensor: ...


def check_mixer_class(obj: object) -> None:
    """Raise ``TypeError`` (or ``ValueError`` for a version mismatch) if ``obj`` breaks the contract."""
    if not isinstance(obj, type):
        raise TypeError(f"a mixer must be a class (an nn.Module subclass), got {obj!r}")
    layout = getattr(obj, "layout", None)
    if layout not in LAYOUTS:
        raise TypeError(f"mixer class {obj.__qualname__} declares layout={layout!r}; expected one of {LAYOUTS}")
    kind = getattr(obj, "kind", None)
    if kind not in KINDS:
        raise TypeError(f"mixer class {obj.__qualname__} declares kind={kind!r}; expected one of {KINDS}")
    version = getattr(obj, "contract_version", CONTRACT_VERSION)
    if version != CONTRACT_VERSION:
        raise ValueError(
            f"mixer class {obj.__qualname__} declares contract_version={version!r}; "
            f"this mixerzoo implements contract version {CONTRACT_VERSION}"
        )
