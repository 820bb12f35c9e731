"""Fast pure-PyTorch 2-D neighborhood attention: query tiles x KV halo, batched matmuls, chunked.

The map is cut (per dilation group) into ``Ty x Tx`` query tiles. All queries of a tile see keys inside
one ``(Ty + Kh - 1) x (Tx + Kw - 1)`` halo box (NATTEN windows are shifted inward at the borders, so a
fixed-size halo clamped to the group always contains them). Per tile the op is a small dense attention
``(Ty*Tx) x halo`` with an additive mask (``-inf`` outside each query's window, plus the relative
position bias), computed with batched matmuls. When the tile covers the whole map this is exactly
masked dense attention, the best formulation for small maps.

Memory is linear in the number of tokens: the tile grid is processed in chunks whose score tensor
stays under a fixed budget, and a hand-written backward (``_NeighborhoodTilesFunction``) recomputes the
scores per chunk from the saved log-sum-exp (flash-attention style) instead of letting autograd keep
every chunk's attention matrix.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["choose_tile", "forward"]

# score-tensor elements per chunk (fp32: 4 bytes each); measured on the 2-core CI box, see bench
_CHUNK_ELEMS = 1 << 20


def choose_tile(kernel: int) -> int:
    """Query-tile edge for a kernel size (measured: about the kernel size balances halo copies
    ``((T+K-1)/T)^2`` against masked work ``((T+K-1)/K)^2``)."""
    return max(4, kernel + 1)


def _axis_tiles(length: int, kernel: int, dilation: int, tile: int):
    """Per-axis tiling. Returns (qidx (nt,Tq), kidx (nt,Hh), bidx (nt,Tq,Hh) with -1 = not a
    neighbour, owner_tile (L,), owner_pos (L,))."""
    min_group = length // dilation  # shortest dilation group
    tq = max(1, min(tile, min_group - kernel + 1))
    hh = tq + kernel - 1
    r = kernel // 2
    qidx, kidx, bidx = [], [], []
    owner_tile = torch.empty(length, dtype=torch.long)
    owner_pos = torch.empty(length, dtype=torch.long)
    for g in range(dilation):
        lg = (length - g + dilation - 1) // dilation
        ntiles = math.ceil(lg / tq)
        for t in range(ntiles):
            j0 = min(t * tq, lg - tq)
            j = torch.arange(j0, j0 + tq)
            start = torch.clamp(j - r, min=0).clamp(max=lg - kernel)
            h0 = min(int(start[0]), lg - hh)
            jk = torch.arange(h0, h0 + hh)
            inside = (jk[None, :] >= start[:, None]) & (jk[None, :] < start[:, None] + kernel)
            b = torch.where(
                inside, jk[None, :] - j[:, None] + kernel - 1, torch.full_like(inside, -1, dtype=torch.long)
            )
            tid = len(qidx)
            own = torch.arange(t * tq, min((t + 1) * tq, lg))
            owner_tile[g + dilation * own] = tid
            owner_pos[g + dilation * own] = own - j0
            qidx.append(g + dilation * j)
            kidx.append(g + dilation * jk)
            bidx.append(b)
    return torch.stack(qidx), torch.stack(kidx), torch.stack(bidx), owner_tile, owner_pos


class _Plan:
    """Everything shape-dependent, built once per (shape, kernel, dilation, tile, device)."""

    def __init__(self, height, width, kernel, dilation, tile, device):
        (kh, kw), (dh, dw), (th, tw) = kernel, dilation, tile
        qy, ky, by, oty, opy = _axis_tiles(height, kh, dh, th)
        qx, kx, bx, otx, opx = _axis_tiles(width, kw, dw, tw)
        self.nty, self.ty = qy.shape
        self.ntx, self.tx = qx.shape
        self.hy, self.hx = ky.shape[1], kx.shape[1]
        self.tq, self.hk = self.ty * self.tx, self.hy * self.hx
        self.kw2 = 2 * kw - 1
        # flat token indices, (nty, ntx, Tq) and (nty, ntx, Hk)
        self.qflat = (
            (qy[:, None, :, None] * width + qx[None, :, None, :]).reshape(self.nty, self.ntx, self.tq).to(device)
        )
        self.kflat = (
            (ky[:, None, :, None] * width + kx[None, :, None, :]).reshape(self.nty, self.ntx, self.hk).to(device)
        )
        # owner of every token: flat index into the (nty, ntx, Tq) tile-major layout
        owner = (oty[:, None] * self.ntx + otx[None, :]) * self.tq + opy[:, None] * self.tx + opx[None, :]
        self.owner = owner.reshape(-1).to(device)
        # separable mask along each axis: (nty, Ty, Hy) and (ntx, Tx, Hx), 0 or -inf
        self.by = by.to(device)
        self.bx = bx.to(device)
        ninf = float("-inf")
        self.mask_y = torch.where(by >= 0, 0.0, ninf).to(device)
        self.mask_x = torch.where(bx >= 0, 0.0, ninf).to(device)

    def bias(self, rows: slice, cols: slice, rpb: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive bias for the tiles ``[rows, cols]``: (heads|1, nr, nc, Tq, Hk)."""
        my = self.mask_y[rows].to(dtype)[:, None, :, None, :, None]  # (nr,1,Ty,1,Hy,1)
        mx = self.mask_x[cols].to(dtype)[None, :, None, :, None, :]  # (1,nc,1,Tx,1,Hx)
        bias = my + mx  # (nr, nc, Ty, Tx, Hy, Hx)
        nr, nc = bias.shape[:2]
        if rpb is None:
            return bias.reshape(1, nr, nc, self.tq, self.hk)
        iy = self.by[rows].clamp_min(0)[:, None, :, None, :, None]
        ix = self.bx[cols].clamp_min(0)[None, :, None, :, None, :]
        bias = rpb.to(dtype)[:, iy, ix] + bias  # (heads, nr, nc, Ty, Tx, Hy, Hx)
        return bias.reshape(rpb.shape[0], nr, nc, self.tq, self.hk)

    def rpb_index(self, rows: slice, cols: slice) -> torch.Tensor:
        """Flat index into rpb[h].view(-1) for every score of the tiles ``[rows, cols]``: (nr, nc, Tq, Hk)."""
        iy = self.by[rows].clamp_min(0)[:, None, :, None, :, None]
        ix = self.bx[cols].clamp_min(0)[None, :, None, :, None, :]
        flat = iy * self.kw2 + ix
        nr, nc = flat.shape[0], flat.shape[1]
        return flat.expand(nr, nc, self.ty, self.tx, self.hy, self.hx).reshape(nr, nc, self.tq, self.hk)

    def chunks(self, batch_heads: int):
        """(rows, cols) slices of the tile grid whose score tensor stays under ``_CHUNK_ELEMS``."""
        per_tile = max(1, batch_heads * self.tq * self.hk)
        tiles = max(1, _CHUNK_ELEMS // per_tile)
        cols = min(self.ntx, tiles)
        rows = max(1, tiles // cols)
        for r0 in range(0, self.nty, rows):
            for c0 in range(0, self.ntx, cols):
                yield slice(r0, min(self.nty, r0 + rows)), slice(c0, min(self.ntx, c0 + cols))


@functools.lru_cache(maxsize=32)
def _plan(height, width, kernel, dilation, tile, device) -> _Plan:
    return _Plan(height, width, kernel, dilation, tile, device)


def _gather(x_flat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x_flat (B, N, heads, D), idx (nc, ntx, T) -> (B, heads, nc, ntx, T, D)."""
    return x_flat[:, idx].permute(0, 4, 1, 2, 3, 5)


class _NeighborhoodTilesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rpb, plan: _Plan, scale: float, acc: torch.dtype):
        b, height, width, heads, dim = q.shape
        n = height * width
        qf, kf, vf = (x.reshape(b, n, heads, dim).to(acc) for x in (q, k, v))
        out_t = q.new_empty((b, heads, plan.nty, plan.ntx, plan.tq, dim), dtype=acc)
        lse_t = q.new_empty((b, heads, plan.nty, plan.ntx, plan.tq), dtype=acc)
        rpb_acc = None if rpb is None else rpb.to(acc)
        for rows, cols in plan.chunks(b * heads):
            qc = _gather(qf, plan.qflat[rows, cols]) * scale
            kc = _gather(kf, plan.kflat[rows, cols])
            vc = _gather(vf, plan.kflat[rows, cols])
            s = torch.matmul(qc, kc.transpose(-1, -2)) + plan.bias(rows, cols, rpb_acc, acc)
            lse = torch.logsumexp(s, dim=-1)
            out_t[:, :, rows, cols] = torch.matmul(torch.exp(s - lse[..., None]), vc)
            lse_t[:, :, rows, cols] = lse
        ctx.save_for_backward(q, k, v, rpb, out_t, lse_t)
        ctx.plan, ctx.scale, ctx.acc = plan, scale, acc
        out = out_t.permute(0, 2, 3, 4, 1, 5).reshape(b, -1, heads, dim)[:, plan.owner]
        return out.reshape(b, height, width, heads, dim).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rpb, out_t, lse_t = ctx.saved_tensors
        plan, scale, acc = ctx.plan, ctx.scale, ctx.acc
        b, height, width, heads, dim = q.shape
        n = height * width
        qf, kf, vf = (x.reshape(b, n, heads, dim).to(acc) for x in (q, k, v))
        # dO in tile layout: only the owner tile of each query receives its gradient
        do_t = grad_out.new_zeros((b, plan.nty * plan.ntx * plan.tq, heads, dim), dtype=acc)
        do_t[:, plan.owner] = grad_out.reshape(b, n, heads, dim).to(acc)
        do_t = do_t.view(b, plan.nty, plan.ntx, plan.tq, heads, dim).permute(0, 4, 1, 2, 3, 5)
        delta = (do_t * out_t).sum(-1)
        dq_t = torch.empty_like(out_t)
        dk = torch.zeros_like(kf)
        dv = torch.zeros_like(vf)
        rpb_acc = None if rpb is None else rpb.to(acc)
        want_rpb = rpb is not None and ctx.needs_input_grad[3]
        drpb = torch.zeros((heads, rpb.shape[1] * rpb.shape[2]), dtype=acc, device=q.device) if want_rpb else None
        for rows, cols in plan.chunks(b * heads):
            qc = _gather(qf, plan.qflat[rows, cols])
            kc = _gather(kf, plan.kflat[rows, cols])
            vc = _gather(vf, plan.kflat[rows, cols])
            s = torch.matmul(qc * scale, kc.transpose(-1, -2)) + plan.bias(rows, cols, rpb_acc, acc)
            p = torch.exp(s - lse_t[:, :, rows, cols, :, None])
            doc = do_t[:, :, rows, cols]
            dvc = torch.matmul(p.transpose(-1, -2), doc)
            ds = p * (torch.matmul(doc, vc.transpose(-1, -2)) - delta[:, :, rows, cols, :, None])
            dq_t[:, :, rows, cols] = torch.matmul(ds, kc) * scale
            dkc = torch.matmul(ds.transpose(-1, -2), qc) * scale
            kidx = plan.kflat[rows, cols].reshape(-1)
            dk.index_add_(1, kidx, dkc.permute(0, 2, 3, 4, 1, 5).reshape(b, -1, heads, dim))
            dv.index_add_(1, kidx, dvc.permute(0, 2, 3, 4, 1, 5).reshape(b, -1, heads, dim))
            if want_rpb:
                drpb.index_add_(1, plan.rpb_index(rows, cols).reshape(-1), ds.sum(0).reshape(heads, -1))
        dq = dq_t.permute(0, 2, 3, 4, 1, 5).reshape(b, -1, heads, dim)[:, plan.owner]
        shape = (b, height, width, heads, dim)
        grads = (dq.reshape(shape).to(q.dtype), dk.reshape(shape).to(k.dtype), dv.reshape(shape).to(v.dtype))
        drpb_out = drpb.view_as(rpb).to(rpb.dtype) if want_rpb else None
        return (*grads, drpb_out, None, None, None)


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

    ``tile`` overrides the query-tile edge per axis (default :func:`choose_tile`).
    """
    _, height, width, _, _ = q.shape
    if tile is None:
        tile = (choose_tile(kernel_size[0]), choose_tile(kernel_size[1]))
    plan = _plan(height, width, tuple(kernel_size), tuple(dilation), tuple(tile), q.device)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return _NeighborhoodTilesFunction.apply(q, k, v, rpb, plan, float(scale), acc)
