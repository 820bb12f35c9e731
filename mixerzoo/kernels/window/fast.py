"""Fast PyTorch window attention: partition into windows and run one batched
``scaled_dot_product_attention`` (windows x heads as the head axis; the rpb / shift mask as a float
``attn_mask`` broadcast over the batch, omitted when neither is used so SDPA can pick its fused
kernels). Autograd by PyTorch; works on CPU and CUDA.

``packed_forward`` (the op on a packed q|k|v, ``window_attention_2d_qkv``) is one autograd function with a
hand-written backward instead: see :class:`_PackedWindowAttention`. While a tracer records the call
(``torch.compile``, ``torch.export``/ONNX, ``torch.jit.trace``, ``torch.fx``) it runs :func:`forward` on the
unbound q, k, v: the packed function loops over the batch in Python (which would fix the batch size of an
exported program) and writes in place into views of its inputs."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mixerzoo.kernels._dispatch import export_contiguous, tracing
from mixerzoo.kernels.window.common import bias_index, merge_windows, region_labels, split_windows

__all__ = ["forward", "packed_forward"]


def _window_bias(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int], rpb: torch.Tensor | None, heads: int,
    dtype: torch.dtype, device: torch.device,
) -> torch.Tensor | None:  # fmt: skip
    """``[nW or 1, heads, L, L]`` additive logits: relative position bias + Swin's region mask (−inf); ``None``
    when there is neither."""
    n_win = (height // window[0]) * (width // window[1])
    length = window[0] * window[1]
    bias = None
    if rpb is not None:
        bias = rpb.to(dtype).flatten(1)[:, bias_index(window).to(device)][None]  # (1, heads, L, L)
    if shift != (0, 0):
        lab = split_windows(region_labels(height, width, window, shift).to(device)[None, :, :, None, None], window)
        lab = lab[0, :, 0, :, 0]
        neg = torch.zeros((n_win, 1, length, length), dtype=dtype, device=device)
        neg.masked_fill_((lab[:, :, None] != lab[:, None, :])[:, None], float("-inf"))
        bias = neg.expand(n_win, heads, length, length) if bias is None else bias + neg
    return bias


def _mask(height, width, window, shift, rpb, heads, dtype, device) -> torch.Tensor | None:
    """:func:`_window_bias` as SDPA's ``attn_mask`` over the ``(1, nW·heads)`` head axis."""
    bias = _window_bias(height, width, window, shift, rpb, heads, dtype, device)
    if bias is None:
        return None
    n_win, length = (height // window[0]) * (width // window[1]), window[0] * window[1]
    return bias.expand(n_win, heads, length, length).reshape(1, n_win * heads, length, length)


def forward(
    q, k, v, window: tuple[int, int], shift: tuple[int, int], rpb: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Window attention on ``(B, H, W, heads, head_dim)`` tensors (arguments already validated)."""
    b, height, width, heads, dim = q.shape
    if shift != (0, 0):
        q, k, v = (torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) for x in (q, k, v))
    qw, kw, vw = (split_windows(x, window).reshape(b, -1, window[0] * window[1], dim) for x in (q, k, v))
    mask = _mask(height, width, window, shift, rpb, heads, q.dtype, q.device)
    out = export_contiguous(F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=scale))
    out = merge_windows(out.view(b, -1, heads, window[0] * window[1], dim), window, height, width)
    if shift != (0, 0):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out


# ---- packed q|k|v: one gather in, one gather out, hand-written backward -----------------------------------


@functools.lru_cache(maxsize=32)
def _image_plan(
    height: int, width: int, heads: int, window: tuple[int, int], shift: tuple[int, int], device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's row indices (a row = one head's ``head_dim`` vector): ``src[q|k|v]`` — for each of q, k, v
    (``[3, nW·heads·L]``) the ``[H, W, 3, heads]`` source row of every window-order position (rolled, window
    order ``[nW, heads, L]``); ``out_src`` — for every ``[H, W, heads]`` output row its window-order position;
    ``out_dst`` its inverse. The shift (Swin's roll by ``-shift``) is folded into the token index."""
    (wh, ww), (sh, sw) = window, shift
    ny, nx = height // wh, width // ww
    n_win, length = ny * nx, wh * ww
    wy, wx = torch.arange(ny).view(ny, 1, 1, 1), torch.arange(nx).view(1, nx, 1, 1)
    ly, lx = torch.arange(wh).view(1, 1, wh, 1), torch.arange(ww).view(1, 1, 1, ww)
    token = (((wy * wh + ly + sh) % height) * width + (wx * ww + lx + sw) % width).reshape(1, n_win, 1, length)
    h = torch.arange(heads).view(1, 1, heads, 1)
    src = ((token * 3 + torch.arange(3).view(3, 1, 1, 1)) * heads + h).reshape(3, -1)
    out_dst = (token * heads + h).reshape(-1)
    out_src = torch.empty_like(out_dst)
    out_src[out_dst] = torch.arange(out_dst.numel())
    return tuple(t.to(device) for t in (src, out_src, out_dst))  # type: ignore[return-value]


def _packed_plan(
    batch: int, height: int, width: int, heads: int, window: tuple[int, int], shift: tuple[int, int], device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole-batch row indices from the cached per-image plan (not cached: they scale with the batch).

    ``buf = src[gather]`` takes ``[B, H, W, 3, heads]`` rows to ``[3, B, nW, heads, L]`` (rolled, window
    order) and ``src = buf[scatter]`` takes them back; ``out = win[out_gather]`` takes ``[B, nW, heads, L]``
    rows to ``[B, H, W, heads]`` (original token order) and ``win = out[out_scatter]`` takes them back.
    """
    src, out_src, out_dst = _image_plan(height, width, heads, window, shift, device)
    n = src.shape[1]  # window-order rows per image and component (= H·W·heads)
    b = torch.arange(batch, device=src.device)
    gather = (src[:, None, :] + (b * 3 * n)[None, :, None]).reshape(-1)  # [3, B, n]
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(gather.numel(), device=src.device)
    out_gather = (out_src[None, :] + (b * n)[:, None]).reshape(-1)
    out_scatter = (out_dst[None, :] + (b * n)[:, None]).reshape(-1)
    return gather, scatter, out_gather, out_scatter


class _PackedWindowAttention(torch.autograd.Function):
    """Window attention on packed ``qkv`` ``[B, H, W, 3, heads, d]``.

    Eager autograd needs a roll and a window partition per q/k/v (and their inverses in backward), the
    bias mask as a differentiable SDPA input (math path), and a stack of dq/dk/dv into the packed
    gradient. Here one row gather puts q|k|v in window order, attention is ``baddbmm`` (bias added per
    image, so it is read from cache) → in-place softmax → ``bmm``, and one gather puts the output back;
    backward writes dq/dk/dv into one packed buffer that one gather returns to token order, and sums the bias
    gradient into the table.
    """

    @staticmethod
    def forward(ctx, qkv, rpb, window, shift, scale):  # noqa: ANN001, ANN205 - autograd signature
        B, H, W, _, heads, d = qkv.shape
        wh, ww = window
        nwh, length = (H // wh) * (W // ww) * heads, wh * ww
        gather, scatter, out_gather, out_scatter = _packed_plan(B, H, W, heads, window, shift, str(qkv.device))
        buf = qkv.reshape(-1, d).index_select(0, gather).view(3, B * nwh, length, d)
        q, k, v = buf.unbind(0)
        q.mul_(scale)
        bias = _window_bias(H, W, window, shift, rpb, heads, qkv.dtype, qkv.device)
        probs = torch.empty((B * nwh, length, length), dtype=qkv.dtype, device=qkv.device)
        if bias is None:
            torch.bmm(q, k.transpose(1, 2), out=probs)
        else:
            bias = bias.expand(nwh // heads, heads, length, length).reshape(nwh, length, length)
            for i in range(B):  # per image: the bias is read once per window-head and stays in cache
                rows = slice(i * nwh, (i + 1) * nwh)
                torch.baddbmm(bias, q[rows], k[rows].transpose(1, 2), out=probs[rows])
        torch.ops.aten._softmax.out(probs, -1, False, out=probs)  # row-wise: safe in place
        out = torch.bmm(probs, v)  # (B·nW·heads, L, d)
        ctx.save_for_backward(buf, probs, scatter, out_scatter)
        ctx.cfg = (qkv.shape, window, scale, None if rpb is None else rpb.shape)
        return out.view(-1, d).index_select(0, out_gather).view(B, H, W, heads, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        buf, probs, scatter, out_scatter = ctx.saved_tensors
        shape, window, scale, rpb_shape = ctx.cfg
        heads, d = shape[4], shape[5]
        q, k, v = buf.unbind(0)
        d_out = grad_out.reshape(-1, d).index_select(0, out_scatter).view(q.shape)
        grads = torch.empty_like(buf)
        dq, dk, dv = grads.unbind(0)
        torch.bmm(probs.transpose(1, 2), d_out, out=dv)
        d_probs = torch.bmm(d_out, v.transpose(1, 2))
        torch.ops.aten._softmax_backward_data.out(d_probs, probs, -1, probs.dtype, grad_input=d_probs)  # dS
        torch.bmm(d_probs, k, out=dq)
        dq.mul_(scale)
        torch.bmm(d_probs.transpose(1, 2), q, out=dk)  # q is already scaled
        d_qkv = grads.view(-1, d).index_select(0, scatter).view(shape)
        d_rpb = None
        if rpb_shape is not None and ctx.needs_input_grad[1]:
            length = window[0] * window[1]
            d_bias = d_probs.view(-1, heads, length * length).sum(0)  # (heads, L*L)
            d_rpb = torch.zeros((heads, rpb_shape[1] * rpb_shape[2]), dtype=d_bias.dtype, device=d_bias.device)
            d_rpb.index_add_(1, bias_index(window).to(d_bias.device).reshape(-1), d_bias)
            d_rpb = d_rpb.view(rpb_shape)
        return d_qkv, d_rpb, None, None, None


def packed_forward(
    qkv: torch.Tensor, window: tuple[int, int], shift: tuple[int, int], rpb: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Window attention on packed ``(B, H, W, 3, heads, head_dim)`` (arguments already validated)."""
    if tracing():
        q, k, v = qkv.unbind(3)
        return forward(q, k, v, window, shift, rpb, scale)
    return _PackedWindowAttention.apply(qkv, rpb, window, shift, scale)
