"""Fast pure-PyTorch 2-D neighborhood attention: query tiles x KV halo, fused attention per tile.

Dilation groups are folded into the batch: token ``i = j * d + g`` of an axis is position ``j`` of group
``g``, so a ``(B, H, W)`` map is viewed as ``(B, H/d, d, W/d, d)`` without copying. Inside a group the
axis is cut into ``T``-token query tiles; the queries of tile ``t`` see keys only inside the uniform halo
``[t*T - r, t*T + T + r)`` (``r = K // 2``; NATTEN windows are shifted inward at the borders, and that
halo still contains them when the first and the last tile hold more than ``r`` real queries). K and V are
zero-padded by ``r`` on both sides, so every halo is an ``unfold`` view and a single copy lays them out
for the attention call. An axis short enough for one tile uses the whole (group) axis as its halo, with
no padding: a 14x14 or 7x7 map is dense attention with an additive bias. Groups of different lengths
(``L % d != 0``) are padded to the longest one; padded keys are masked and padded queries dropped.

Per tile the op is a small dense attention ``(Ty*Tx) x (Hy*Hx)`` with an additive mask (``-inf`` outside
each query's window, plus the relative position bias gathered from ``rpb``):

* inference (no autograd): ``scaled_dot_product_attention`` with the float mask. On CPU this is the
  fused flash kernel (QK, mask, online softmax and PV per block; no score tensor in memory). The mask is
  built with one ``index_select`` from ``rpb`` and cached while ``rpb`` is unchanged (same storage and
  version counter), so a model in ``eval()`` builds it once per layer;
* training: :class:`_NeighborhoodTilesFunction`. The forward is the CPU flash kernel (it also returns the
  log-sum-exp; elsewhere a chunked matmul forward), the backward recomputes the probabilities per chunk
  from the saved log-sum-exp (flash-attention style) with batched matmuls, keeping every temporary under
  ``_CHUNK_ELEMS`` elements; the halo gradients are summed back with a few strided adds (the adjoint of
  the ``unfold``) and the ``rpb`` gradient with one ``index_add_``.

Memory stays linear in the number of tokens: the tile layouts are ``((T + 2r) / T)^2`` times K and V.

While a tracer records the call (``torch.compile``, ``torch.export``/ONNX, ``torch.jit.trace``, ``torch.fx``;
:func:`mixerzoo.kernels._dispatch.tracing`) the inference formulation runs with or without autograd (its mask
is differentiable in ``rpb``), on a fresh plan and mask: nothing traced is cached, and no autograd Function or
private CPU flash op is recorded.
"""

from __future__ import annotations

import collections
import functools
import math
import weakref

import torch
import torch.nn.functional as F

from mixerzoo.kernels._dispatch import export_contiguous, tracing

__all__ = ["choose_tile", "forward"]

# elements of one score-sized temporary per backward chunk (fp32: 4 bytes each); measured on the
# 2-core CI box (1M ~ 4 MB: larger chunks were slower, smaller ones add per-chunk overhead)
_CHUNK_ELEMS = 1 << 20
# no-grad masks kept for this many rpb tensors (LRU); a NAT/DiNAT layer holds one
_MASK_CACHE_SIZE = 64
_HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def _tile_ok(tile: int, lengths: tuple[int, ...], kernel: int) -> bool:
    """A ``tile`` works if the halo of every tile holds its queries' windows: each group's first and
    last tile must contain more than ``kernel // 2`` real queries (or the axis is a single tile)."""
    r = kernel // 2
    if tile >= max(lengths):
        return True
    return tile > r and all(lg % tile == 0 or lg % tile > r for lg in lengths)


def _group_lengths(length: int, dilation: int) -> tuple[int, ...]:
    return tuple(sorted({(length - g + dilation - 1) // dilation for g in range(dilation)}))


def choose_tile(length: int, kernel: int, dilation: int = 1) -> int:
    """Query-tile edge along one axis (a value ``>=`` the group length means one tile, no halo padding).

    Per axis the score work is ``n_tiles * T * (T + K - 1)``: small tiles waste less, but the CPU kernels
    like blocks of 8 (measured, batch 8, head dim 32, 1 thread, no-grad: a 56-map with 7x7 windows takes
    51 ms with T = 8 and 61 ms with T = 7, T = 12: 78 ms; training is even). So: a group of at most ``2K``
    tokens is one dense tile; otherwise among ``K <= T <= 2K`` prefer tiles dividing the group length
    (no padded queries), then multiples of 8, then the smallest.
    """
    lengths = _group_lengths(length, dilation)
    lmax = max(lengths)
    if lmax <= 2 * kernel:
        return lmax
    cands = [t for t in range(max(kernel, 2), 2 * kernel + 1) if _tile_ok(t, lengths, kernel)]
    if not cands:
        return lmax
    return min(cands, key=lambda t: (lmax % t != 0, t % 8 != 0, t))


class _Axis:
    """Tiling of one axis: ``nt`` tiles of ``tile`` queries per group, halo ``halo`` keys starting at
    ``t * tile - pad`` of the group (``pad`` = zero padding on the low side), bias index table
    ``bidx`` ``(groups, nt, tile, halo)`` with -1 for keys outside the query's window."""

    def __init__(self, length: int, kernel: int, dilation: int, tile: int | None) -> None:
        lengths = _group_lengths(length, dilation)
        lmax = max(lengths)
        r = kernel // 2
        if tile is None:
            tile = choose_tile(length, kernel, dilation)
        tile = max(1, int(tile))
        while not _tile_ok(tile, lengths, kernel):
            tile += 1
        self.d = dilation
        self.groups = 1 if length % dilation == 0 else dilation  # distinct group layouts
        if tile >= lmax:
            self.tile, self.nt, self.halo, self.pad = lmax, 1, lmax, 0
        else:
            self.tile, self.nt, self.halo, self.pad = tile, math.ceil(lmax / tile), tile + 2 * r, r
        self.qlen = self.nt * self.tile  # queries per group, padded
        self.klen = self.qlen + 2 * self.pad if self.nt > 1 else lmax  # keys per group, padded
        segs = math.ceil(self.halo / self.tile)
        self.buf = max(self.klen, (self.nt + segs - 1) * self.tile)  # rows of the halo-adjoint buffer
        tables = []
        for g in range(self.groups):
            lg = (length - g + dilation - 1) // dilation
            j = torch.arange(self.qlen).clamp(max=lg - 1).view(self.nt, self.tile)  # padded queries: last one
            start = (j - r).clamp(min=0).clamp(max=lg - kernel)
            p = torch.arange(self.nt)[:, None, None] * self.tile + torch.arange(self.halo) - self.pad
            inside = (p >= start[..., None]) & (p < start[..., None] + kernel)
            tables.append(torch.where(inside, p - j[..., None] + kernel - 1, -1))
        self.bidx = torch.stack(tables)  # (groups, nt, tile, halo)


class _Plan:
    """Everything shape-dependent, built once per (shape, kernel, dilation, tile, heads, device)."""

    def __init__(self, height, width, kernel, dilation, tile, heads, device):
        (kh, kw), (dh, dw), (th, tw) = kernel, dilation, tile
        self.y, self.x = _Axis(height, kh, dh, th), _Axis(width, kw, dw, tw)
        y, x = self.y, self.x
        self.height, self.width, self.heads = height, width, heads
        self.tq, self.hk = y.tile * x.tile, y.halo * x.halo
        self.nt = y.nt * x.nt
        self.nrpb = (2 * kh - 1) * (2 * kw - 1)
        # attention batch layout: (B, dy, dx, heads, nty, ntx, Tq, .); the mask varies with the dilation
        # group only when some axis has groups of different lengths, then (dy, dx) join the mask's dim 1
        self.grouped = y.groups * x.groups > 1
        self.mgroups = dh * dw if self.grouped else 1
        # flat index into rpb_ext[h] = cat(rpb[h].flatten(), [-inf]) for every score: (Gy, Gx, nty, ntx, Tq, Hk)
        by = y.bidx[:, None, :, None, :, None, :, None]  # (Gy,1,nty,1,Ty,1,Hy,1)
        bx = x.bidx[None, :, None, :, None, :, None, :]  # (1,Gx,1,ntx,1,Tx,1,Hx)
        flat = torch.where((by >= 0) & (bx >= 0), by * (2 * kw - 1) + bx, self.nrpb)
        flat = flat.expand(dh, dw, -1, -1, -1, -1, -1, -1) if self.grouped else flat
        flat = flat.reshape(self.mgroups, 1, self.nt, self.tq, self.hk)
        self.index = flat.reshape(-1).to(device)  # into rpb_ext[h]: (mgroups*nt*Tq*Hk,), shared by the heads
        self.valid = (flat < self.nrpb).expand(-1, heads, -1, -1, -1).to(device)
        self.mask_shape = (1, self.mgroups * heads * self.nt, self.tq, self.hk)
        self._const_masks: dict[torch.dtype, torch.Tensor] = {}

    # ---- bias / mask ------------------------------------------------------------------------
    def mask(self, rpb: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``(1, M, Tq, Hk)``: rpb bias inside each window, ``-inf`` outside."""
        if rpb is None:
            m = self._const_masks.get(dtype)
            if m is None:
                m = torch.zeros(self.valid.shape, dtype=dtype, device=self.index.device)
                m.masked_fill_(~self.valid, float("-inf"))
                m = self._const_masks[dtype] = m.view(self.mask_shape)
            return m
        ninf = rpb.new_full((self.heads, 1), float("-inf"), dtype=dtype)
        ext = torch.cat([rpb.to(dtype).reshape(self.heads, self.nrpb), ninf], 1)
        bias = ext.index_select(1, self.index)  # (heads, mgroups * nt * Tq * Hk)
        if self.mgroups > 1:  # mask layout is (dy, dx, heads, ...)
            bias = bias.view(self.heads, self.mgroups, -1).transpose(0, 1)
        return bias.reshape(self.mask_shape)

    def rpb_grad(self, dbias: torch.Tensor, rpb: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`mask` for the rpb part: ``dbias`` ``(M, Tq, Hk)`` -> ``rpb``'s shape."""
        ext = dbias.new_zeros(self.heads, self.nrpb + 1)
        dbias = dbias.view(self.mgroups, self.heads, -1).transpose(0, 1).reshape(self.heads, -1)
        ext.index_add_(1, self.index, dbias)
        return ext.view(self.heads, self.nrpb + 1)[:, : self.nrpb].reshape(rpb.shape)

    # ---- layouts ----------------------------------------------------------------------------
    def _padded_view(self, t: torch.Tensor, rows: int, cols: int, pad_y: int, pad_x: int, dtype) -> torch.Tensor:
        """``t`` (B, H, W, h, D) zero-padded into ``(B, rows, dy, cols, dx, h, D)`` (group-major rows)."""
        y, x = self.y, self.x
        b, _, _, h, dim = t.shape
        if pad_y == 0 and pad_x == 0 and rows * y.d == self.height and cols * x.d == self.width:
            return t.view(b, rows, y.d, cols, x.d, h, dim)
        buf = t.new_empty((b, rows * y.d, cols * x.d, h, dim), dtype=dtype)
        y0, y1, x0, x1 = pad_y * y.d, pad_y * y.d + self.height, pad_x * x.d, pad_x * x.d + self.width
        buf[:, y0:y1, x0:x1] = t
        buf[:, :y0].zero_()  # padding: any finite value (masked); zeros
        buf[:, y1:].zero_()
        buf[:, y0:y1, :x0].zero_()
        buf[:, y0:y1, x1:].zero_()
        return buf.view(b, rows, y.d, cols, x.d, h, dim)

    def q_tiles(self, t: torch.Tensor, dtype) -> torch.Tensor:
        """(B, H, W, h, D) -> (B, dy, dx, h, nty, ntx, Ty, Tx, D) contiguous in ``dtype``."""
        y, x = self.y, self.x
        p = self._padded_view(t, y.qlen, x.qlen, 0, 0, dtype)
        b, h, dim = t.shape[0], t.shape[3], t.shape[4]
        p = p.view(b, y.nt, y.tile, y.d, x.nt, x.tile, x.d, h, dim).permute(0, 3, 6, 7, 1, 4, 2, 5, 8)
        return _contiguous(p, dtype)

    def kv_tiles(self, t: torch.Tensor, dtype) -> torch.Tensor:
        """(B, H, W, h, D) -> halos (B, dy, dx, h, nty, ntx, Hy, Hx, D) contiguous in ``dtype``."""
        y, x = self.y, self.x
        p = self._padded_view(t, y.klen, x.klen, y.pad, x.pad, dtype)
        p = p.unfold(1, y.halo, y.tile).unfold(3, x.halo, x.tile)  # (B, nty, dy, ntx, dx, h, D, Hy, Hx)
        return _contiguous(p.permute(0, 2, 4, 5, 1, 3, 7, 8, 6), dtype)

    def q_untile(self, t: torch.Tensor, b: int, dim: int) -> torch.Tensor:
        """Inverse of :meth:`q_tiles` (padded queries dropped): a (B, H, W, h, D) tensor."""
        y, x = self.y, self.x
        t = t.view(b, y.d, x.d, self.heads, y.nt, x.nt, y.tile, x.tile, dim).permute(0, 4, 6, 1, 5, 7, 2, 3, 8)
        t = t.reshape(b, y.qlen * y.d, x.qlen * x.d, self.heads, dim)
        if t.shape[1] != self.height or t.shape[2] != self.width:
            t = t[:, : self.height, : self.width]
        return t

    def kv_untile(self, t: torch.Tensor, b: int, dim: int) -> torch.Tensor:
        """Adjoint of :meth:`kv_tiles`: sum halo gradients back onto the (B, H, W, h, D) map."""
        y, x = self.y, self.x
        t = t.view(b, y.d, x.d, self.heads, y.nt, x.nt, y.halo, x.halo, dim)
        buf = t.new_empty((b, y.buf, y.d, x.buf, x.d, self.heads, dim))
        # segment (0, 0) (full tiles) writes rows/cols [0, qlen); zero the rest, then add the other segments
        buf[:, y.qlen :].zero_()
        buf[:, : y.qlen, :, x.qlen :].zero_()
        for sy in range(0, y.halo, y.tile):
            ly = min(y.tile, y.halo - sy)
            for sx in range(0, x.halo, x.tile):
                lx = min(x.tile, x.halo - sx)
                dst = buf[:, sy : sy + y.qlen, :, sx : sx + x.qlen]
                dst = dst.view(b, y.nt, y.tile, y.d, x.nt, x.tile, x.d, self.heads, dim)[:, :, :ly, :, :, :lx]
                src = t[..., sy : sy + ly, sx : sx + lx, :].permute(0, 4, 6, 1, 5, 7, 2, 3, 8)
                if sy == 0 and sx == 0:
                    dst.copy_(src)
                else:
                    dst.add_(src)
        flat = buf.view(b, y.buf * y.d, x.buf * x.d, self.heads, dim)
        return flat[:, y.pad * y.d : y.pad * y.d + self.height, x.pad * x.d : x.pad * x.d + self.width]

    def attn_shape(self, b: int, rows: int, dim: int) -> tuple[int, int, int, int]:
        """(N, M, rows, D): the (dy, dx) groups go to the batch unless the mask depends on them."""
        y, x = self.y, self.x
        if self.grouped:
            return b, y.d * x.d * self.heads * self.nt, rows, dim
        return b * y.d * x.d, self.heads * self.nt, rows, dim

    def chunks(self, n: int, m: int):
        """(n-slice, m-slice) blocks of the (N, M) attention batch with <= ``_CHUNK_ELEMS`` scores (evenly
        split); every block is contiguous in a (N, M, ...) tensor (whole M rows, or one n)."""
        per = self.tq * self.hk
        if n == 0 or m == 0:
            return  # an empty batch: nothing to compute
        if m * per <= _CHUNK_ELEMS:
            count = math.ceil(n / max(1, _CHUNK_ELEMS // (m * per)))
            step = math.ceil(n / count)
            for n0 in range(0, n, step):
                yield slice(n0, min(n, n0 + step)), slice(0, m)
        else:
            count = math.ceil(m / max(1, _CHUNK_ELEMS // per))
            step = math.ceil(m / count)
            for n0 in range(n):
                for m0 in range(0, m, step):
                    yield slice(n0, n0 + 1), slice(m0, min(m, m0 + step))


def _contiguous(view: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(view.shape, dtype=dtype, device=view.device)
    out.copy_(view)
    return out


@functools.lru_cache(maxsize=32)
def _plan(height, width, kernel, dilation, tile, heads, device) -> _Plan:
    return _Plan(height, width, kernel, dilation, tile, heads, device)


# ---- no-grad mask cache: id(rpb) -> (weakref, key, mask) -----------------------------------------
_MASKS: collections.OrderedDict[int, tuple] = collections.OrderedDict()


def _cached_mask(plan: _Plan, rpb: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if rpb is None or rpb.is_inference():
        return plan.mask(rpb, dtype)
    # the plan object itself (not its id) is part of the key: the entry keeps it alive, so no id reuse
    key = (plan, rpb.data_ptr(), rpb._version, tuple(rpb.shape), rpb.dtype, dtype)
    hit = _MASKS.get(id(rpb))
    if hit is not None and hit[0]() is rpb and hit[1] == key:
        _MASKS.move_to_end(id(rpb))
        return hit[2]
    mask = plan.mask(rpb, dtype)
    _MASKS[id(rpb)] = (weakref.ref(rpb), key, mask)
    _MASKS.move_to_end(id(rpb))
    while len(_MASKS) > _MASK_CACHE_SIZE:
        _MASKS.popitem(last=False)
    return mask


def _attend_chunked(qt, kt, vt, mask, scale):
    """Matmul forward in chunks: (out, lse) for (N, M, Tq, D) tiles (devices without the CPU kernel)."""
    n, m = qt.shape[:2]
    out = torch.empty_like(qt)
    lse = qt.new_empty(qt.shape[:3])
    per = qt.shape[2] * kt.shape[2]
    step_m = max(1, min(m, _CHUNK_ELEMS // per))
    for n0 in range(n):
        for m0 in range(0, m, step_m):
            sm = slice(m0, min(m, m0 + step_m))
            s = torch.matmul(qt[n0, sm] * scale, kt[n0, sm].transpose(-1, -2)).add_(mask[0, sm])
            lse[n0, sm] = torch.logsumexp(s, -1)
            s.sub_(lse[n0, sm, :, None]).exp_()
            torch.matmul(s, vt[n0, sm], out=out[n0, sm])
    return out, lse


class _NeighborhoodTilesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rpb, plan: _Plan, scale: float, acc: torch.dtype):
        b, _, _, _, dim = q.shape
        qt = plan.q_tiles(q, acc).view(plan.attn_shape(b, plan.tq, dim))
        kt = plan.kv_tiles(k, acc).view(plan.attn_shape(b, plan.hk, dim))
        vt = plan.kv_tiles(v, acc).view(plan.attn_shape(b, plan.hk, dim))
        mask = plan.mask(None if rpb is None else rpb.detach(), acc)
        if qt.device.type == "cpu" and _HAS_CPU_FLASH:
            out_t, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qt, kt, vt, attn_mask=mask, scale=scale
            )
        else:
            out_t, lse = _attend_chunked(qt, kt, vt, mask, scale)
        ctx.save_for_backward(qt, kt, vt, out_t, lse, mask, rpb)
        ctx.plan, ctx.scale, ctx.shape, ctx.dtype = plan, scale, q.shape, q.dtype
        return plan.q_untile(out_t, b, dim).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        qt, kt, vt, out_t, lse, mask, rpb = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        b, _, _, _, dim = ctx.shape
        acc = qt.dtype
        do_t = plan.q_tiles(grad_out, acc).view(out_t.shape)
        delta = (do_t * out_t).sum(-1)
        n, m = out_t.shape[:2]
        dq_t = torch.empty_like(qt)
        dk_t = torch.empty_like(kt)
        dv_t = torch.empty_like(vt)
        want_rpb = rpb is not None and ctx.needs_input_grad[3]
        dbias = mask.new_zeros(mask.shape[1:]) if want_rpb else None
        qs = qt * scale  # S = (scale q) k^T; dK = dS^T (scale q); dQ = scale (dS k), scaled once at the end
        for sn, sm in plan.chunks(n, m):
            qc, kc, vc, doc = qs[sn, sm], kt[sn, sm], vt[sn, sm], do_t[sn, sm]
            p = torch.matmul(qc, kc.transpose(-1, -2))  # (n', m', Tq, Hk)
            p.add_(mask[:, sm]).sub_(lse[sn, sm, :, None]).exp_()
            torch.matmul(p.transpose(-1, -2), doc, out=dv_t[sn, sm])
            ds = torch.matmul(doc, vc.transpose(-1, -2)).sub_(delta[sn, sm, :, None]).mul_(p)
            if want_rpb:
                dbias[sm] += ds.sum(0) if ds.shape[0] > 1 else ds[0]
            torch.matmul(ds, kc, out=dq_t[sn, sm])
            torch.matmul(ds.transpose(-1, -2), qc, out=dk_t[sn, sm])
        dq_t.mul_(scale)
        dq = plan.q_untile(dq_t, b, dim)
        dk = plan.kv_untile(dk_t, b, dim)
        dv = plan.kv_untile(dv_t, b, dim)
        dtype = ctx.dtype
        drpb = plan.rpb_grad(dbias, rpb).to(rpb.dtype) if want_rpb else None
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), drpb, None, None, None


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    rpb: torch.Tensor | None,
    scale: float,
    *,
    tile: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Neighborhood attention on ``(B, H, W, heads, head_dim)`` tensors (arguments already validated).

    ``tile`` overrides the query-tile edge per axis (default :func:`choose_tile`; rounded up to the next
    edge whose halos hold every window).
    """
    b, height, width, heads, dim = q.shape
    tile = (None, None) if tile is None else tuple(tile)
    traced = tracing()
    args = (height, width, tuple(kernel_size), tuple(dilation), tile, heads, q.device)
    plan = _Plan(*args) if traced else _plan(*args)  # a plan built under a tracer's fake mode is never cached
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, rpb))
    if needs_grad and not traced:
        return _NeighborhoodTilesFunction.apply(q, k, v, rpb, plan, float(scale), acc)
    # inference (and tracing): fused SDPA on the tiles with a cached mask (a fresh, differentiable one when traced)
    qt = plan.q_tiles(q, acc).view(plan.attn_shape(b, plan.tq, dim))
    kt = plan.kv_tiles(k, acc).view(plan.attn_shape(b, plan.hk, dim))
    vt = plan.kv_tiles(v, acc).view(plan.attn_shape(b, plan.hk, dim))
    mask = plan.mask(rpb, acc) if traced else _cached_mask(plan, rpb, acc)
    out_t = export_contiguous(F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=float(scale)))
    return plan.q_untile(out_t, b, dim).to(q.dtype)
