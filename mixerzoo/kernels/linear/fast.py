"""Fast PyTorch path for :func:`mixerzoo.kernels.linear_attention` (CPU default; no torch.compile).

One ``autograd.Function`` with a hand-written backward, written for few memory passes and few
allocations (on CPU each fresh ``[B, N, C]`` buffer also costs page faults):

* the feature maps run in place and write φ straight into a heads-first ``[B, H, N, D]`` buffer, so
  every matmul is copy-free; the focused map keeps only three per-token scalars (max, two norms) for
  backward and recomputes the rest;
* the normaliser rides along the value matmul as an extra column (``[V | 1]``): numerator and
  denominator come from one GEMM, and the division writes the output directly in ``[B, N, H, Dv]``;
* backward: one GEMM each for dφ(q), the state gradient, dφ(k) and dV, then the feature-map derivative
  in closed form (see ``_phi_bwd``).

All arithmetic is fp32 (fp64 for fp64 inputs), so fp16/bf16 inputs cannot overflow.

While a tracer records the call (``torch.compile``/``torch.export``/ONNX/``torch.jit.trace``/``torch.fx``; see
:func:`mixerzoo.kernels._dispatch.tracing`) the readable formulation runs instead: same maths, plain
differentiable ops (the ``out=`` writes into transposed views above cannot be exported).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixerzoo.kernels._dispatch import tracing
from mixerzoo.kernels.linear import reference

__all__ = ["forward"]

_Stats = tuple[Tensor, Tensor, Tensor] | None


def _phi_fwd(x: Tensor, out_hf: Tensor, kernel: str, p: float, feature_eps: float) -> _Stats:
    """φ(x) for ``x`` ``[B, N, H, D]`` written into ``out_hf`` ``[B, H, N, D]``; returns the focus stats."""
    dst = out_hf.transpose(1, 2)
    if kernel == "identity":
        dst.copy_(x)
        return None
    if kernel == "relu":
        torch.clamp(x, min=0, out=dst)
        return None
    if kernel == "elu":  # elu(x) + 1 = exp(min(x, 0)) + max(x, 0)
        torch.exp(torch.clamp(x, max=0), out=dst)
        dst.add_(torch.clamp(x, min=0))
        return None
    # focused: w = (relu(x) + eps) / m with m = max_c; φ = m · w^p · ‖w‖ / ‖w^p‖ (norms over all H·D channels).
    # All reductions run over the contiguous last axis of a [B, N, C] buffer; one strided write at the end.
    B, N, H, D = x.shape
    tiny = torch.finfo(x.dtype).tiny
    w = torch.clamp(x, min=0).add_(feature_eps).reshape(B, N, H * D)  # fresh buffer (a copy if x is strided)
    m = w.amax(dim=-1, keepdim=True).clamp_min_(tiny)
    w.div_(m)
    n1 = torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min_(tiny)
    w.pow_(p)  # now w^p
    n2 = torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min_(tiny)
    stats = (m.unsqueeze(-1), n1.unsqueeze(-1), n2.unsqueeze(-1))  # [B, N, 1, 1] each
    torch.mul(w.view(B, N, H, D), stats[0] * stats[1] / stats[2], out=dst)
    return stats


def _phi_bwd(x: Tensor, phi: Tensor, g: Tensor, stats: _Stats, kernel: str, p: float, feature_eps: float) -> Tensor:
    """dL/dx (contiguous ``[B, N, H, D]``) from dL/dφ ``g``; ``phi``/``g`` are ``[B, N, H, D]`` views."""
    if kernel == "identity":
        return g.contiguous()
    if kernel == "relu":
        return torch.where(x > 0, g, 0.0)
    if kernel == "elu":  # d(elu + 1)/dx = 1 for x > 0, exp(x) = φ otherwise
        return torch.where(x > 0, g, g * phi)
    # f(u) = u^p‖u‖/‖u^p‖ on w = u/m (the derivative is 0-homogeneous, m cancels), wp = w^p = φ·n2/(m·n1):
    #   df/du_c = p·(n1/n2)·w_c^(p-1)·(g_c − (a/n2²)·wp_c) + (a/(n1·n2))·w_c,   a = Σ_c g_c·wp_c
    assert stats is not None
    m, n1, n2 = stats
    to_wp = n2 / (m * n1)
    a = (g * phi).sum(dim=(-2, -1), keepdim=True).mul_(to_wp)
    w = torch.clamp(x, min=0).add_(feature_eps).div_(m)
    t = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.addcmul(g, phi, -(a / n2.square()) * to_wp, out=t)
    if p == 3.0:
        t.mul_(w).mul_(w)
    elif p != 1.0:
        t.mul_(torch.where(w > 0, w.pow(p - 1.0), 0.0))
    t.mul_(p * n1 / n2).addcmul_(w, a / (n1 * n2))
    return torch.ops.aten.threshold_backward(t, x, 0.0)  # ReLU's mask (x > 0) in one pass, no bool buffer


class _LinearAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel, p, feature_eps, eps):  # noqa: ANN001, ANN205 - autograd signature
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        B, N, H, D = q.shape
        M, Dv = v.shape[1], v.shape[3]
        qf, kf = q.to(acc), k.to(acc)
        phi_q = torch.empty((B, H, N, D), dtype=acc, device=q.device)
        phi_k = torch.empty((B, H, M, D), dtype=acc, device=q.device)
        stats_q = _phi_fwd(qf, phi_q, kernel, p, feature_eps)
        stats_k = _phi_fwd(kf, phi_k, kernel, p, feature_eps)
        v_aug = torch.empty((B, H, M, Dv + 1), dtype=acc, device=v.device)  # [V | 1], heads first
        v_aug[..., :Dv].copy_(v.transpose(1, 2))
        v_aug[..., Dv].fill_(1.0)
        state = torch.matmul(phi_k.transpose(-1, -2), v_aug).div_(M)  # [B, H, D, Dv+1] = [S | z]
        num = torch.matmul(phi_q, state[..., :Dv])  # [B, H, N, Dv] contiguous
        den = torch.matmul(phi_q, state[..., Dv:]).add_(eps)  # [B, H, N, 1]
        out = torch.empty((B, N, H, Dv), dtype=q.dtype, device=q.device)
        if acc == q.dtype:
            torch.div(num, den, out=out.transpose(1, 2))  # written in [B, N, H, Dv] order
        else:
            out.transpose(1, 2).copy_(num.div_(den))
        saved = [q, k, phi_q, phi_k, v_aug, state, den, out]
        for stats in (stats_q, stats_k):
            saved.extend(stats if stats is not None else ())
        ctx.save_for_backward(*saved)
        ctx.cfg = (kernel, p, feature_eps)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        q, k, phi_q, phi_k, v_aug, state, den, out, *stats = ctx.saved_tensors
        kernel, p, feature_eps = ctx.cfg
        stats_q, stats_k = (tuple(stats[:3]), tuple(stats[3:])) if stats else (None, None)
        acc = phi_q.dtype
        B, N, H, Dv = out.shape
        M = k.shape[1]
        g = grad_out.to(acc).transpose(1, 2)  # [B, H, N, Dv]
        g_aug = torch.empty((B, H, N, Dv + 1), dtype=acc, device=out.device)  # [dL/dnum | dL/dden]
        torch.div(g, den, out=g_aug[..., :Dv])
        g_aug[..., Dv] = -(g_aug[..., :Dv] * out.to(acc).transpose(1, 2)).sum(-1)
        grad_phi_q = torch.matmul(g_aug, state.transpose(-1, -2))  # [B, H, N, D]
        grad_state = torch.matmul(phi_q.transpose(-1, -2), g_aug).div_(M)  # [B, H, D, Dv+1]
        grad_phi_k = torch.matmul(v_aug, grad_state.transpose(-1, -2))  # [B, H, M, D]
        grad_v = torch.matmul(phi_k, grad_state[..., :Dv]).transpose(1, 2)  # [B, M, H, Dv] view
        grad_q = _phi_bwd(
            q.to(acc), phi_q.transpose(1, 2), grad_phi_q.transpose(1, 2), stats_q, kernel, p, feature_eps
        )
        grad_k = _phi_bwd(
            k.to(acc), phi_k.transpose(1, 2), grad_phi_k.transpose(1, 2), stats_k, kernel, p, feature_eps
        )
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(out.dtype), None, None, None, None


def forward(
    q: Tensor, k: Tensor, v: Tensor, *, kernel: str, focusing_factor: float, feature_eps: float, eps: float
) -> Tensor:
    """Same contract as :func:`mixerzoo.kernels.linear.reference.forward`."""
    if tracing():
        return reference.forward(
            q, k, v, kernel=kernel, focusing_factor=focusing_factor, feature_eps=feature_eps, eps=eps
        )
    return _LinearAttentionFunction.apply(q, k, v, kernel, float(focusing_factor), float(feature_eps), float(eps))
