"""Public 2-D neighborhood attention op (NATTEN ``na2d`` semantics, heads-last layout)."""

from __future__ import annotations

from mixerzoo.kernels import _flops
import torch

from mixerzoo.kernels._dispatch import Impl, resolve_impl

__all__ = ["neighborhood_attention_2d"]

OP = "neighborhood_attention_2d"


def _pair(name: str, value, *, odd: bool = False) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    ok = (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
    )
    if not ok:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(x < 1 for x in pair):
        raise ValueError(f"{name} must be >= 1 per axis, got {value!r}")
    if odd and any(x % 2 == 0 for x in pair):
        raise ValueError(f"{name} must be odd per axis (even kernels are not supported), got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(f"{name} must be 5-D (B, H, W, heads, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if q.shape[-1] == 0 or q.shape[3] == 0:
        raise ValueError(f"q must have heads >= 1 and head_dim >= 1, got shape {tuple(q.shape)}")


def _check_rpb(rpb: torch.Tensor | None, q: torch.Tensor, expected: tuple[int, int, int]) -> None:
    if rpb is None:
        return
    if not isinstance(rpb, torch.Tensor):
        raise TypeError(f"rpb must be a torch.Tensor or None, got {type(rpb).__name__}")
    if tuple(rpb.shape) != expected:
        raise ValueError(f"rpb must have shape (heads, 2*kh-1, 2*kw-1) = {expected}, got {tuple(rpb.shape)}")
    if not rpb.is_floating_point():
        raise TypeError(f"rpb must be floating point, got dtype {rpb.dtype}")
    if rpb.device != q.device:
        raise ValueError(f"rpb must be on q's device {q.device}, got {rpb.device}")


def neighborhood_attention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    *,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """2-D neighborhood attention (NAT / DiNAT), NATTEN semantics.

    Every query attends to the ``kh x kw`` keys around it inside its dilation group. Per axis of
    length ``L`` (kernel ``K``, dilation ``d``): query ``i`` belongs to group ``g = i % d`` at position
    ``j = i // d`` of a sub-sequence of length ``Lg = ceil((L - g) / d)``; its window starts at
    ``clamp(j - K // 2, 0, Lg - K)``, i.e. windows are shifted inward at the borders and never
    shrunk, so every query sees exactly ``kh * kw`` keys. The relative position bias of a neighbour
    is ``rpb[head, (jk_y - j_y) + kh - 1, (jk_x - j_x) + kw - 1]`` (offsets in dilated steps;
    asymmetric at the borders), as in NATTEN 0.14-0.17.

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)`` (heads-last, like ``natten.na2d``), same shape, dtype
            and device.
        kernel_size: odd window size, int or ``(kh, kw)`` (tested 3-13).
        dilation: int or ``(dh, dw)``; needs ``H >= kh * dh`` and ``W >= kw * dw`` (pad in the mixer).
        rpb: optional relative position bias ``(heads, 2*kh - 1, 2*kw - 1)``, any float dtype
            (gets a gradient if it requires one).
        scale: logit scale, default ``head_dim ** -0.5``.
        impl: ``"auto"`` (triton on CUDA, else the fast PyTorch path), ``"triton"``, ``"torch"``
            (query tiles x KV halo, chunked, linear memory) or ``"reference"`` (gather oracle).
            An explicit choice never falls back; see :func:`mixerzoo.kernels.explain`.

    Returns:
        ``(B, H, W, heads, head_dim)`` in q's dtype. On the ``meta`` device only shapes are inferred.
    """
    _check_qkv(q, k, v)
    ks = _pair("kernel_size", kernel_size, odd=True)
    dil = _pair("dilation", dilation)
    _, height, width, heads, head_dim = q.shape
    for axis, (length, kern, d) in enumerate(((height, ks[0], dil[0]), (width, ks[1], dil[1]))):
        if length < kern * d:
            dim_name = "H" if axis == 0 else "W"
            raise ValueError(
                f"q's {dim_name} = {length} is smaller than kernel_size * dilation = {kern} * {d} = {kern * d} "
                f"along axis {axis} (kernel_size={kernel_size!r}, dilation={dilation!r}); pad the input"
            )
    _check_rpb(rpb, q, (heads, 2 * ks[0] - 1, 2 * ks[1] - 1))
    if scale is None:
        scale = head_dim**-0.5
    scale = float(scale)
    if _flops.counting():  # FLOP counters charge what NA computes, not the dense tiles of the CPU path
        return _flops.charge(
            OP, _flops.na2d_flops(q.shape, v.shape, ks),
            lambda q_, k_, v_, rpb_: neighborhood_attention_2d(q_, k_, v_, ks, dil, rpb=rpb_, scale=scale, impl=impl),
            (q, k, v, rpb), q.shape, q.dtype,
        )  # fmt: skip

    if q.device.type == "meta":  # shape inference through the registered op's fake implementation
        from mixerzoo.kernels.neighborhood import triton as _tri

        return _tri.forward(q, k, v, ks, dil, rpb, scale)

    def _triton_ok() -> tuple[bool, str]:
        from mixerzoo.kernels.neighborhood import triton as _tri

        return _tri.is_supported(q, k, v, rpb)

    name = resolve_impl(
        OP, impl, [("triton", _triton_ok), ("torch", lambda: (True, "ok")), ("reference", lambda: (True, "ok"))]
    )
    if name == "triton":
        from mixerzoo.kernels.neighborhood import triton as mod
    elif name == "torch":
        from mixerzoo.kernels.neighborhood import fast as mod
    else:
        from mixerzoo.kernels.neighborhood import reference as mod
    return mod.forward(q, k, v, ks, dil, rpb, scale)
