"""Public window-attention op: non-overlapping windows, optional Swin shift and relative position bias."""

from __future__ import annotations

from mixerzoo.kernels import _flops
import torch

from mixerzoo.kernels._dispatch import Impl, resolve_impl
from mixerzoo.kernels.neighborhood.api import _check_qkv, _check_rpb, _pair

__all__ = ["window_attention_2d", "window_attention_2d_qkv"]

OP = "window_attention_2d"


def window_attention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int | tuple[int, int],
    *,
    shift: int | tuple[int, int] = 0,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Attention inside non-overlapping ``wh x ww`` windows (HiLo Hi-Fi branch, Swin W-MSA / SW-MSA).

    Each token attends to the ``wh * ww`` tokens of its window. With ``shift = (sh, sw) != 0`` this is
    Swin's SW-MSA done end to end: the map is rolled by ``(-sh, -sw)``, attention runs per window with
    the tokens that wrapped around masked from the others (Swin's region mask; masked with ``-inf``
    where Swin adds ``-100``, identical up to ~1e-44 weights), and the result is rolled back, so
    inputs and output are in the original token positions. Because the qkv and output projections
    are per token, this equals Swin's roll -> attention -> roll-back around them.

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)``, same shape, dtype and device; ``H`` and ``W`` must be
            multiples of the window (the mixer pads).
        window_size: int or ``(wh, ww)``.
        shift: Swin cyclic shift, int or ``(sh, sw)``, ``0 <= shift < window`` per axis.
        rpb: optional relative position bias ``(heads, 2*wh - 1, 2*ww - 1)`` with **Swin's indexing**
            ``rpb[h, qy - ky + wh - 1, qx - kx + ww - 1]`` (query minus key). A Swin checkpoint's
            ``relative_position_bias_table`` ``((2wh-1)*(2ww-1), heads)`` maps to it by
            ``table.T.reshape(heads, 2*wh - 1, 2*ww - 1)``.
        scale: logit scale, default ``head_dim ** -0.5``.
        impl: ``"auto"`` / ``"torch"`` (batched SDPA over windows; fused kernels on CUDA) or
            ``"reference"`` (explicit softmax). There is no Triton kernel for this op (windows are
            fully block-sparse: SDPA already does no wasted work), so ``"triton"`` raises.

    Returns:
        ``(B, H, W, heads, head_dim)`` in q's dtype.
    """
    return _window_attention(q, k, v, None, window_size, shift, rpb, scale, impl)


def window_attention_2d_qkv(
    qkv: torch.Tensor,
    window_size: int | tuple[int, int],
    *,
    shift: int | tuple[int, int] = 0,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """:func:`window_attention_2d` on a packed ``(B, H, W, 3, heads, head_dim)`` q|k|v tensor (a fused qkv
    projection's output, viewed), with the same arguments, result and implementations.

    The ``"torch"`` implementation on fp32/fp64 inputs runs one hand-written autograd function: a single row
    gather puts q|k|v into (rolled) window order, attention is a batched GEMM with the bias/shift mask added in
    place, softmax in place, and one gather restores token order; backward returns the gradient packed (no
    stack of dq/dk/dv) and sums the bias gradient straight into ``rpb``. Other dtypes run the unpacked op.
    """
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 6 or qkv.shape[3] != 3:
        shape = tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__
        raise ValueError(f"qkv must be (B, H, W, 3, heads, head_dim), got {shape}")
    q, k, v = qkv.unbind(3)
    return _window_attention(q, k, v, qkv, window_size, shift, rpb, scale, impl)


def _window_attention(q, k, v, qkv, window_size, shift, rpb, scale, impl: Impl) -> torch.Tensor:  # noqa: ANN001
    _check_qkv(q, k, v)
    win = _pair("window_size", window_size)
    sh = (shift, shift) if isinstance(shift, int) and not isinstance(shift, bool) else shift
    if not (
        isinstance(sh, (tuple, list))
        and len(sh) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in sh)
    ):
        raise TypeError(f"shift must be an int or a pair of ints, got {shift!r}")
    sh = (int(sh[0]), int(sh[1]))
    if not all(0 <= s < w for s, w in zip(sh, win)):
        raise ValueError(
            f"shift must satisfy 0 <= shift < window_size per axis, got shift={shift!r}, window_size={window_size!r}"
        )
    _, height, width, heads, head_dim = q.shape
    for name, length, w in (("H", height, win[0]), ("W", width, win[1])):
        if length % w != 0:
            raise ValueError(
                f"q's {name} = {length} is not a multiple of window_size {window_size!r}; pad the input to a multiple of {w}"
            )
    _check_rpb(rpb, q, (heads, 2 * win[0] - 1, 2 * win[1] - 1))
    scale = float(head_dim**-0.5 if scale is None else scale)
    if _flops.counting():
        n_win = (height // win[0]) * (width // win[1])
        area = win[0] * win[1]
        return _flops.charge(
            OP, _flops.dense_attention_flops(q.shape[0] * heads * n_win, area, area, head_dim, v.shape[-1]),
            lambda q_, k_, v_, rpb_: window_attention_2d(q_, k_, v_, win, shift=sh, rpb=rpb_, scale=scale, impl=impl),
            (q, k, v, rpb), q.shape, q.dtype,
        )  # fmt: skip

    if q.device.type == "meta":
        return torch.empty_like(q)
    name = resolve_impl(OP, impl, [("torch", lambda: (True, "ok")), ("reference", lambda: (True, "ok"))])
    if name == "torch":
        from mixerzoo.kernels.window import fast as mod

        if qkv is not None and qkv.dtype in (torch.float32, torch.float64):
            return mod.packed_forward(qkv, win, sh, rpb, scale)
    else:
        from mixerzoo.kernels.window import reference as mod
    return mod.forward(q, k, v, win, sh, rpb, scale)
