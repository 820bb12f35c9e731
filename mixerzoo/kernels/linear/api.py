"""Public API of non-causal kernelized (linear) attention, including FLatten's focused linear attention.

Layout (heads last, the ``Linear`` output viewed as ``[B, N, H, D]`` without a copy)::

    q   [B, N, H, D]      N queries
    k   [B, M, H, D]      M keys (M may differ from N, e.g. PVT's spatially reduced keys)
    v   [B, M, H, Dv]
    out [B, N, H, Dv]     same dtype as q

What the op computes. A feature map φ is applied to every token of q and k over all of its ``H·D``
channels, then, per batch and head::

    S = (1/M) Σ_j φ(k_j) v_jᵀ          [D, Dv]
    z = (1/M) Σ_j φ(k_j)               [D]
    out_i = (φ(q_i)ᵀ S) / (φ(q_i)ᵀ z + eps)

Feature maps (``kernel=``)::

    "identity"  φ(x) = x                        (caller applies its own map)
    "relu"      φ(x) = relu(x)
    "elu"       φ(x) = elu(x) + 1               (Katharopoulos et al.)
    "focused"   u = relu(x) + feature_eps;  φ(x) = u^p · ‖u‖ / ‖u^p‖    with p = focusing_factor and both
                norms over all H·D channels of the token (FLatten §3.2; evaluated as m·f(u/m), m = max_c u,
                which is exact and cannot overflow)

Everything is accumulated in fp32 (fp64 for fp64 inputs), so fp16/bf16 inputs whose powers, norms or key
sums overflow their own dtype still give finite, correct outputs (FLatten issues #15/#18).

Calling it from FLatten's mixer (``focused_linear``). The learnable ``scale`` (softplus) and the positional
term belong to the mixer, as does the depthwise-conv rank restoration. Two equivalent options:

* exact FLatten maths: ``qs = (relu(q) + 1e-6) / softplus(scale)``, ``ks = (relu(k + pos) + 1e-6) /
  softplus(scale)``, then ``linear_attention(qs, ks, v, kernel="focused", focusing_factor=p,
  feature_eps=0.0, eps=1e-6)`` (relu is the identity on the already-positive inputs);
* fused: ``linear_attention(q / softplus(scale), (k + pos) / softplus(scale), v, kernel="focused")``,
  which adds ``feature_eps = 1e-6`` after the division instead of before it (differs from the original by
  at most ``1e-6 · |1 - 1/σ|`` per feature before focusing; negligible).

In both, FLatten's ``z = 1/(q·mean(k) + 1e-6)`` and ``kv = (kᵀ/√n)(v/√n)`` are exactly ``eps`` and the ``1/M``
above. Reshape ``[B, N, C]`` projections with ``.view(B, N, H, D)`` and the output back with ``.view(B, N, -1)``.
"""

from __future__ import annotations

from mixerzoo.kernels import _flops
import math

import torch
from torch import Tensor

from mixerzoo.kernels import _triton
from mixerzoo.kernels._dispatch import TRACING_REASON, Impl, resolve_impl, tracing
from mixerzoo.kernels.linear.common import KERNELS, FeatureKernel

__all__ = ["linear_attention"]

OP = "linear_attention"


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [B, N, H, D], got q.shape={tuple(q.shape)}")
    if k.dim() != 4 or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"k must be [B, M, H, D] with B, H, D of q {tuple(q.shape)}, got k.shape={tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must be [B, M, H, Dv] with B, M, H of k {tuple(k.shape)}, got v.shape={tuple(v.shape)}")
    if k.shape[1] < 1:
        raise ValueError(f"need at least one key, got k.shape={tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kernel: FeatureKernel = "relu",
    focusing_factor: float = 3.0,
    feature_eps: float = 1e-6,
    eps: float = 1e-6,
    impl: Impl = "auto",
) -> Tensor:
    """Non-causal linear attention ``out_i = φ(q_i)ᵀS / (φ(q_i)ᵀz + eps)`` (see the module docstring).

    Args:
        q: ``[B, N, H, D]``; k: ``[B, M, H, D]``; v: ``[B, M, H, Dv]``; one floating dtype.
        kernel: feature map φ: ``"identity"`` | ``"relu"`` | ``"elu"`` | ``"focused"``.
        focusing_factor: the power ``p`` of ``"focused"`` (FLatten default 3); > 0.
        feature_eps: added after the ReLU by ``"focused"`` only; >= 0.
        eps: added to the normaliser ``φ(q)ᵀz``; >= 0.
        impl: ``"auto"`` | ``"reference"`` | ``"torch"`` | ``"triton"``.

    Returns:
        ``[B, N, H, Dv]`` in ``q.dtype``.
    """
    _check(q, k, v)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got kernel={kernel!r}")
    if not (math.isfinite(focusing_factor) and focusing_factor > 0):
        raise ValueError(f"focusing_factor must be a positive number, got focusing_factor={focusing_factor}")
    if not (math.isfinite(feature_eps) and feature_eps >= 0):
        raise ValueError(f"feature_eps must be >= 0, got feature_eps={feature_eps}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be >= 0, got eps={eps}")
    if _flops.counting():
        return _flops.charge(
            OP, _flops.linear_attention_flops(q.shape, k.shape, v.shape),
            lambda q_, k_, v_: linear_attention(
                q_, k_, v_, kernel=kernel, focusing_factor=focusing_factor, feature_eps=feature_eps, eps=eps, impl=impl
            ),
            (q, k, v), (*q.shape[:3], v.shape[-1]), q.dtype,
        )  # fmt: skip

    def triton_ok() -> tuple[bool, str]:
        if tracing():
            return False, TRACING_REASON
        ok, reason = _triton.triton_supported_for(q, k, v)
        if not ok:
            return ok, reason
        from mixerzoo.kernels.linear import triton as linear_triton  # noqa: PLC0415 - lazy

        return linear_triton.is_supported(q, k, v)

    def torch_ok() -> tuple[bool, str]:
        if q.device.type == "meta":
            return False, "meta tensors: the reference traces shapes"
        return True, "ok"

    name = resolve_impl(OP, impl, [("triton", triton_ok), ("torch", torch_ok), ("reference", lambda: (True, "ok"))])
    if name == "triton":
        from mixerzoo.kernels.linear import triton as mod  # noqa: PLC0415
    elif name == "torch":
        from mixerzoo.kernels.linear import fast as mod  # noqa: PLC0415
    else:
        from mixerzoo.kernels.linear import reference as mod  # noqa: PLC0415
    return mod.forward(
        q, k, v, kernel=kernel, focusing_factor=float(focusing_factor), feature_eps=float(feature_eps), eps=float(eps)
    )
